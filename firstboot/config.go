package firstboot

import (
	"fmt"
	"os"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// ReadConfig reads a rendered configuration file (JSON or YAML) written by
// nodeconf.Encode: either one node (`bellbuild render` output, a config
// volume's node.json) or a bundle (what an image carries). Exactly one of
// the results is non-nil. The file must verify: one cut short or written
// by hand (no checksum, or a wrong one) is refused, never applied in
// part. Unknown fields are errors: a typo must not silently disable a
// setting. A file with none of a rendered document's keys is an error
// wrapping nodeconf.ErrNotRendered (it may be a Divingbell values file,
// which needs the site model); an empty one wraps nodeconf.ErrEmpty.
func ReadConfig(path string) (*nodeconf.Node, *nodeconf.Bundle, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	return decodeConfig(path, data)
}

func decodeConfig(path string, data []byte) (*nodeconf.Node, *nodeconf.Bundle, error) {
	n, b, err := nodeconf.Decode(data)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return n, b, nil
}
