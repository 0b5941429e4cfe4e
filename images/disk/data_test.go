package disk

import (
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
)

// TestDataPartition: with DataSize the disk gets a fourth partition,
// belldata, after the config volume, left as zeros and not even written
// (the file stays sparse), and the GPT is still clean.
func TestDataPartition(t *testing.T) {
	need(t, "sgdisk")
	fx := newFixture("n1")
	spec := fx.spec(t)
	spec.DataSize = 64<<20 + 1 // rounded up to a whole MiB
	img, l := build(t, spec)
	if out, err := exec.Command("sgdisk", "-v", img).CombinedOutput(); err != nil || !strings.Contains(string(out), "No problems found") {
		t.Fatalf("sgdisk -v: %v\n%s", err, out)
	}
	if len(l.Partitions) != 4 {
		t.Fatalf("%d partitions, want 4", len(l.Partitions))
	}
	d, conf := l.Partitions[3], l.Partitions[2]
	if d.Name != DataName || d.Index != 4 || d.Offset != conf.Offset+conf.Size || d.Size != 65<<20 {
		t.Errorf("data partition %+v after %+v, want belldata, 65 MiB, right after the config volume", d, conf)
	}
	out, err := exec.Command("sgdisk", "-i", "4", img).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Partition name: '"+DataName+"'") || !strings.Contains(string(out), "0FC63DAF-8483-4772-8E79-3D69D8477DE4") {
		t.Errorf("sgdisk -i 4: %v\n%s", err, out)
	}
	// Sparse: the file uses far less than its size.
	var st os.FileInfo
	if st, err = os.Stat(img); err != nil {
		t.Fatal(err)
	}
	if st.Size() != l.Size {
		t.Errorf("file size %d, layout %d", st.Size(), l.Size)
	}
	if used := blocksUsed(t, img); used > l.Size-d.Size {
		t.Errorf("the image uses %d bytes on disk: the data partition was written", used)
	}
}

func blocksUsed(t *testing.T, file string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(file, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}
