package nodeconf

// Container is one container a service declares (SITE/services.yaml),
// carried in the rendered node of every host the service is placed on.
type Container struct {
	// Service is the service that declares it.
	Service string `json:"service" yaml:"service"`
	// Name is unique within the service.
	Name string `json:"name" yaml:"name"`
	// Image is the image reference, e.g. registry.example.org/app:1.2.
	Image   string            `json:"image" yaml:"image"`
	Command []string          `json:"command,omitempty" yaml:"command,omitempty"`
	Args    []string          `json:"args,omitempty" yaml:"args,omitempty"`
	Env     map[string]string `json:"env,omitempty" yaml:"env,omitempty"`
	// Ports are the container's TCP ports.
	Ports []int `json:"ports,omitempty" yaml:"ports,omitempty"`
}

// FactName is the fact that says whether service is placed on a node:
// enable_SERVICE, with each "-" written "_".
func FactName(service string) string {
	b := []byte("enable_" + service)
	for i, c := range b {
		if c == '-' {
			b[i] = '_'
		}
	}
	return string(b)
}
