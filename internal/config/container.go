package config

import (
	"fmt"
	"math"
	"regexp"
	"strings"

	"github.com/sessiond/sessiond/internal/pool"
	"github.com/sessiond/sessiond/internal/probe"
	"github.com/sessiond/sessiond/internal/sandbox"
)

// ContainerTemplate is ARM's properties.customContainerTemplate, for CustomContainer pools:
//
//	customContainerTemplate:
//	  containers:
//	  - name: app
//	    image: myregistry.azurecr.io/app:v1
//	    command: [/app/server]            # replaces the image's entrypoint
//	    args: [--port, "8080"]            # replaces the image's cmd
//	    env: [{name: MODE, value: prod}, {name: TOKEN, secretRef: token}]
//	    resources: {cpu: 0.5, memory: 1Gi}
//	    probes: [{type: Startup, httpGet: {path: /health, port: 8080}, periodSeconds: 1}]
//	  ingress: {targetPort: 8080}
//	  registryCredentials: {server: myregistry.azurecr.io, username: app, passwordSecretRef: registry-password}
//	secrets: [{name: token, value: "..."}, {name: registry-password, value: "..."}]
type ContainerTemplate struct {
	Containers          []Container          `yaml:"containers"`
	Ingress             *Ingress             `yaml:"ingress"`
	RegistryCredentials *RegistryCredentials `yaml:"registryCredentials"`
}

// Container is one entry of customContainerTemplate.containers; a pool has exactly one.
type Container struct {
	Name      string        `yaml:"name"`
	Image     string        `yaml:"image"`
	Command   []string      `yaml:"command"`
	Args      []string      `yaml:"args"`
	Env       []EnvVar      `yaml:"env"`
	Resources *Resources    `yaml:"resources"`
	Probes    []probe.Probe `yaml:"probes"`
}

// EnvVar is {name, value} or {name, secretRef}.
type EnvVar struct {
	Name      string `yaml:"name"`
	Value     string `yaml:"value"`
	SecretRef string `yaml:"secretRef"`
}

// Resources are a container's CPU (cores) and memory ("0.5Gi"); ephemeralStorage is
// read-only in ARM and ignored.
type Resources struct {
	CPU              float64 `yaml:"cpu"`
	Memory           string  `yaml:"memory"`
	EphemeralStorage string  `yaml:"ephemeralStorage"`
}

// Ingress is customContainerTemplate.ingress.
type Ingress struct {
	TargetPort *int `yaml:"targetPort"`
}

// RegistryCredentials is customContainerTemplate.registryCredentials. Managed identities
// (identity) are Azure's alone.
type RegistryCredentials struct {
	Server            string `yaml:"server"`
	Username          string `yaml:"username"`
	PasswordSecretRef string `yaml:"passwordSecretRef"`
	Identity          string `yaml:"identity"`
}

// Secret is one entry of properties.secrets. Key Vault references are Azure's alone.
type Secret struct {
	Name        string `yaml:"name"`
	Value       string `yaml:"value"`
	KeyVaultURL string `yaml:"keyVaultUrl"`
	Identity    string `yaml:"identity"`
}

// secretName is Container Apps' rule for secret names.
var secretName = regexp.MustCompile(`^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$`)

// secrets returns the pool's secrets by name.
func secrets(list []Secret) (map[string]string, error) {
	out := map[string]string{}
	for i, sec := range list {
		f := fmt.Sprintf("properties.secrets[%d]", i)
		switch {
		case !secretName.MatchString(sec.Name):
			return nil, fieldError(f+".name", "%q: want lower-case letters, digits, '-' and '.', starting and ending with a letter or digit", sec.Name)
		case sec.KeyVaultURL != "" || sec.Identity != "":
			return nil, fieldError(f+".keyVaultUrl", "Key Vault references are not supported: give the value")
		case strings.ContainsRune(sec.Value, 0):
			return nil, fieldError(f+".value", "contains a NUL byte")
		}
		if _, dup := out[sec.Name]; dup {
			return nil, fieldError(f+".name", "%q declared twice", sec.Name)
		}
		out[sec.Name] = sec.Value
	}
	return out, nil
}

// containerSpec fills s (a CustomContainer pool whose other properties and sessiond
// settings are parsed) from d's customContainerTemplate and secrets.
func (d PoolDecl) containerSpec(s *pool.Spec) error {
	const f = "properties.customContainerTemplate"
	p := d.Properties
	t := p.CustomContainerTemplate
	if t == nil {
		return fieldError(f, "required for containerType CustomContainer")
	}
	if d.Sessiond.Image != "" {
		return fieldError("sessiond.image", "a CustomContainer pool's image is %s.containers[0].image", f)
	}
	if len(t.Containers) != 1 {
		return fieldError(f+".containers", "%d containers: want exactly one", len(t.Containers))
	}
	ct := t.Containers[0]
	fc := f + ".containers[0]"
	sec, err := secrets(p.Secrets)
	if err != nil {
		return err
	}
	c := &pool.ContainerSpec{Image: ct.Image, Command: ct.Command, Args: ct.Args, Probes: ct.Probes, Secrets: sec,
		InsecureRegistry: d.Sessiond.InsecureRegistry}
	switch {
	case ct.Image == "":
		return fieldError(fc+".image", "required")
	case strings.ContainsAny(ct.Image, " \t\n") || len(ct.Image) > 1024:
		return fieldError(fc+".image", "%q is not an image reference", ct.Image)
	case t.Ingress == nil || t.Ingress.TargetPort == nil:
		return fieldError(f+".ingress.targetPort", "required: the port the container listens on")
	}
	c.TargetPort = *t.Ingress.TargetPort
	for name, list := range map[string][]string{"command": ct.Command, "args": ct.Args} {
		for i, a := range list {
			if strings.ContainsRune(a, 0) {
				return fieldError(fmt.Sprintf("%s.%s[%d]", fc, name, i), "contains a NUL byte")
			}
		}
	}
	for _, e := range ct.Env {
		c.Env = append(c.Env, pool.EnvVar{Name: e.Name, Value: e.Value, SecretRef: e.SecretRef})
	}
	if r := t.RegistryCredentials; r != nil {
		if r.Identity != "" {
			return fieldError(f+".registryCredentials.identity", "managed identities are not supported: give username and passwordSecretRef")
		}
		c.Registry = &pool.RegistryCredentials{Server: r.Server, Username: r.Username, PasswordSecretRef: r.PasswordSecretRef}
	}
	if r := ct.Resources; r != nil {
		if err := resources(r, &s.Limits, fc+".resources"); err != nil {
			return err
		}
	}
	s.Image, s.Container = ct.Image, c
	if _, err := s.Validate(); err != nil {
		// The template's own rules (pool.ContainerSpec), named as ARM names them.
		msg := err.Error()
		if i := strings.Index(msg, "customContainerTemplate."); i >= 0 {
			return fmt.Errorf("properties.%s", msg[i:])
		}
		return err
	}
	return nil
}

// resources sets l's CPU and memory from ARM's container resources. They replace
// sessiond.cpu and sessiond.memory: giving both is an error.
func resources(r *Resources, l *sandbox.Limits, f string) error {
	if r.CPU != 0 {
		if l.CPUMillis != 0 {
			return fieldError(f+".cpu", "sessiond.cpu is set too: set one of them")
		}
		if r.CPU < 0.01 || r.CPU > 64 || math.IsNaN(r.CPU) {
			return fieldError(f+".cpu", "%v: want 0.01 to 64 cores", r.CPU)
		}
		l.CPUMillis = int64(math.Round(r.CPU * 1000))
	}
	if r.Memory != "" {
		if l.MemoryBytes != 0 {
			return fieldError(f+".memory", "sessiond.memory is set too: set one of them")
		}
		n, err := parseQuantity(r.Memory, 32<<20)
		if err != nil {
			return fieldError(f+".memory", "%v", err)
		}
		l.MemoryBytes = n
	}
	return nil
}
