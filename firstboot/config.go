package firstboot

import (
	"bytes"
	"errors"
	"fmt"
	"os"

	"go.yaml.in/yaml/v3"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
)

// ErrNotRendered means a config file is neither a rendered node nor a
// bundle (it may be a Divingbell values file, which needs the site model).
var ErrNotRendered = errors.New("neither a rendered node nor a bundle")

// ReadConfig reads a rendered configuration file (JSON or YAML): either one
// node (`bellbuild render` output, a config volume's node.json) or a bundle
// (what an image carries). Exactly one of the results is non-nil. Unknown
// fields are errors: a typo must not silently disable a setting.
func ReadConfig(path string) (*nodeconf.Node, *nodeconf.Bundle, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	var top map[string]any
	if err := yaml.Unmarshal(data, &top); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	_, hasNodes := top["nodes"]
	_, hasDefault := top["default"]
	_, hasProfile := top["profile"]
	_, hasConf := top["conf"]
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	switch {
	case hasNodes || hasDefault:
		var b nodeconf.Bundle
		if err := dec.Decode(&b); err != nil {
			return nil, nil, fmt.Errorf("%s: bundle: %w", path, err)
		}
		return nil, &b, nil
	case hasProfile || (hasConf && len(top) > 1 && top["node"] != nil):
		var n nodeconf.Node
		if err := dec.Decode(&n); err != nil {
			return nil, nil, fmt.Errorf("%s: node: %w", path, err)
		}
		return &n, nil, nil
	}
	return nil, nil, fmt.Errorf("%s: %w", path, ErrNotRendered)
}
