package squashfs

import (
	"crypto/sha256"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

// TestGolden pins the image of a fixed tree: its digest, and the
// superblock as unsquashfs -s reads it (flags, counts, sizes). A change to
// the format, the inode order or the compressor's output shows up here;
// refresh with go test ./images/squashfs -run TestGolden -update after
// checking that the other tests still pass.
func TestGolden(t *testing.T) {
	unsquashfs := needTool(t, "unsquashfs")
	tests := []struct {
		name string
		opts Options
	}{
		{"everytype-zstd", Options{MkfsTime: 1700000000}},
		{"everytype-gzip-exportable", Options{MkfsTime: 1700000000, Compression: Gzip, Exportable: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := everyType()
			tr.Reproducible(1700000000)
			img := writeImage(t, tr, tt.opts)
			cmd := exec.Command(unsquashfs, "-s", img)
			cmd.Env = append(os.Environ(), "TZ=UTC")
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("unsquashfs -s: %v\n%s", err, out)
			}
			lines := strings.Split(string(out), "\n")[1:] // the first names the temporary file
			got := fmt.Sprintf("sha256 %x\n%s", sha256.Sum256(imageBytes(t, img)), strings.Join(lines, "\n"))
			golden := filepath.Join("testdata", tt.name+".golden")
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if diff := cmp.Diff(string(want), got); diff != "" {
				t.Errorf("%s (-want +got):\n%s", golden, diff)
			}
		})
	}
}
