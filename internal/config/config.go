// Package config reads sessiond's configuration file: the pools to serve, declared with the
// property names of ARM's Microsoft.App/sessionPools resource (so that a Bicep or ARM
// `properties` block pastes in), plus sessiond's own settings per pool. YAML or JSON.
//
//	pools:
//	- name: default
//	  properties:                       # ARM names
//	    containerType: PythonLTS        # PythonLTS | Shell | CustomContainer (container.go)
//	    scaleConfiguration: {maxConcurrentSessions: 10, readySessionInstances: 5}
//	    dynamicPoolConfiguration:
//	      lifecycleConfiguration: {lifecycleType: Timed, cooldownPeriodInSeconds: 300}
//	    sessionNetworkConfiguration: {status: EgressDisabled}
//	  sessiond:                         # sessiond's own
//	    runtime: runsc                  # runsc | runc (default: runsc when available)
//	    image: python
//	    cpu: 1                          # cores
//	    memory: 1Gi
//	    disk: 1Gi
//	    warmupCode: "import numpy, pandas"
//	    executionTimeoutCapInSeconds: 220
//
// Every error names the field it is about. arm.go reads and writes one pool as the
// management API's JSON document. It imports pool (for the Spec it produces); cmd/sessiond
// and internal/controlplane import it.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/sessiond/sessiond/internal/auth"
	"github.com/sessiond/sessiond/internal/netns"
	"github.com/sessiond/sessiond/internal/pool"
)

// File is the configuration file.
type File struct {
	Pools []PoolDecl `yaml:"pools"`
	// Auth configures authentication (bearer JWTs, API keys) and roles; without it the
	// server answers on loopback only.
	Auth auth.Config `yaml:"auth"`
}

// Config is a validated configuration.
type Config struct {
	Pools []pool.Spec
	Auth  auth.Config
}

// PoolDecl declares one pool.
type PoolDecl struct {
	Name       string     `yaml:"name"`
	Properties Properties `yaml:"properties"`
	Sessiond   Own        `yaml:"sessiond"`
}

// Properties are the ARM properties sessiond reads. Others that ARM has but that mean
// nothing here (environmentId, poolManagementType, managedIdentitySettings, ...) are
// accepted and ignored, so that a real ARM block pastes in.
type Properties struct {
	ContainerType               string                       `yaml:"containerType"`
	PoolManagementType          string                       `yaml:"poolManagementType"`
	EnvironmentID               string                       `yaml:"environmentId"`
	ScaleConfiguration          *ScaleConfiguration          `yaml:"scaleConfiguration"`
	DynamicPoolConfiguration    *DynamicPoolConfiguration    `yaml:"dynamicPoolConfiguration"`
	SessionNetworkConfiguration *SessionNetworkConfiguration `yaml:"sessionNetworkConfiguration"`
	ManagedIdentitySettings     []map[string]any             `yaml:"managedIdentitySettings"`
	Secrets                     []Secret                     `yaml:"secrets"`
	McpServerSettings           map[string]any               `yaml:"mcpServerSettings"`
	CustomContainerTemplate     *ContainerTemplate           `yaml:"customContainerTemplate"`
}

type ScaleConfiguration struct {
	MaxConcurrentSessions *int `yaml:"maxConcurrentSessions"`
	ReadySessionInstances *int `yaml:"readySessionInstances"`
}

type DynamicPoolConfiguration struct {
	LifecycleConfiguration *LifecycleConfiguration `yaml:"lifecycleConfiguration"`
	// Older API versions put these here.
	ExecutionType           string `yaml:"executionType"`
	CooldownPeriodInSeconds *int   `yaml:"cooldownPeriodInSeconds"`
}

type LifecycleConfiguration struct {
	LifecycleType           string `yaml:"lifecycleType"`
	CooldownPeriodInSeconds *int   `yaml:"cooldownPeriodInSeconds"`
	MaxAlivePeriodInSeconds *int   `yaml:"maxAlivePeriodInSeconds"`
}

type SessionNetworkConfiguration struct {
	Status string `yaml:"status"`
	// AllowedCIDRs and AllowedDomains (sessiond's own) narrow EgressEnabled to these
	// destinations: IPv4 CIDRs, and names ("example.com", or "*.example.com" for any name
	// below it) that the host's DNS forwarder resolves. Empty: any public destination.
	AllowedCIDRs   []string `yaml:"allowedCidrs"`
	AllowedDomains []string `yaml:"allowedDomains"`
}

// Own are sessiond's own per-pool settings.
type Own struct {
	Runtime                      string  `yaml:"runtime"`
	Image                        string  `yaml:"image"`
	CPU                          float64 `yaml:"cpu"`
	Memory                       string  `yaml:"memory"`
	Disk                         string  `yaml:"disk"`
	Pids                         int64   `yaml:"pids"`
	WarmupCode                   *string `yaml:"warmupCode"`
	ExecutionTimeoutCapInSeconds int     `yaml:"executionTimeoutCapInSeconds"`
	// InsecureRegistry lets a CustomContainer pool pull its image over plain HTTP or
	// unverified TLS (a registry on the local network; loopback needs no such thing).
	InsecureRegistry bool `yaml:"insecureRegistry"`
}

// DefaultImage is the image of code-interpreter pools that name none.
const DefaultImage = "python"

// DefaultMaxAlivePeriod is maxAlivePeriodInSeconds of an OnContainerExit pool that sets
// none (Azure's CLI default).
const DefaultMaxAlivePeriod = time.Hour

// Load reads and validates the file at path.
func Load(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading configuration: %w", err)
	}
	c, err := ParseConfig(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// ParseConfig reads and validates a configuration.
func ParseConfig(r io.Reader) (*Config, error) {
	f, specs, err := parse(r)
	if err != nil {
		return nil, err
	}
	if err := f.Auth.Validate(); err != nil {
		return nil, fmt.Errorf("auth.%w", err)
	}
	return &Config{Pools: specs, Auth: f.Auth}, nil
}

// Parse reads and validates a configuration's pools.
func Parse(r io.Reader) ([]pool.Spec, error) {
	_, specs, err := parse(r)
	return specs, err
}

func parse(r io.Reader) (*File, []pool.Spec, error) {
	dec := yaml.NewDecoder(r)
	dec.KnownFields(true)
	var f File
	if err := dec.Decode(&f); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil, errors.New("the configuration is empty: want a list of pools")
		}
		return nil, nil, fmt.Errorf("parsing configuration: %s", strings.TrimPrefix(err.Error(), "yaml: "))
	}
	if len(f.Pools) == 0 {
		return nil, nil, errors.New("pools: want at least one pool")
	}
	seen := map[string]bool{}
	var specs []pool.Spec
	for i, d := range f.Pools {
		s, err := d.spec()
		if err != nil {
			return nil, nil, fmt.Errorf("pools[%d] (%s).%w", i, d.Name, err)
		}
		if seen[s.Name] {
			return nil, nil, fmt.Errorf("pools[%d].name: %q declared twice", i, s.Name)
		}
		seen[s.Name] = true
		specs = append(specs, s)
	}
	return &f, specs, nil
}

// Default is the configuration without a file: one PythonLTS pool named "default".
func Default() []pool.Spec {
	s, err := PoolDecl{Name: "default"}.spec()
	if err != nil {
		panic("default pool invalid: " + err.Error())
	}
	return []pool.Spec{s}
}

var poolName = regexp.MustCompile(`^[a-z][a-z0-9-]{1,61}[a-z0-9]$`)

// fieldError is a validation error that names its field.
func fieldError(field, format string, args ...any) error {
	return &FieldError{Path: field, Msg: fmt.Sprintf(format, args...)}
}

func (d PoolDecl) spec() (pool.Spec, error) {
	s := pool.Spec{
		Name:                  d.Name,
		ContainerType:         pool.PythonLTS,
		MaxConcurrentSessions: pool.DefaultMaxConcurrentSessions,
		ReadySessionInstances: pool.DefaultReadySessionInstances,
		LifecycleType:         "Timed",
		CooldownPeriod:        pool.DefaultCooldownPeriod,
		ExecutionTimeoutCap:   pool.DefaultExecutionTimeoutCap,
		Image:                 DefaultImage,
	}
	if !poolName.MatchString(d.Name) {
		return s, fieldError("name", "%q: want 3-63 characters of a-z, 0-9 and '-', starting with a letter and not ending with '-'", d.Name)
	}
	p := d.Properties
	switch strings.ToLower(p.ContainerType) {
	case "", "pythonlts":
		s.ContainerType = pool.PythonLTS
	case "shell":
		s.ContainerType = pool.Shell
	case "customcontainer":
		s.ContainerType = pool.CustomContainer
	case "nodelts", "gpubase":
		return s, fieldError("properties.containerType", "%q is not supported yet (PythonLTS, Shell and CustomContainer are)", p.ContainerType)
	default:
		return s, fieldError("properties.containerType", "%q: want PythonLTS, Shell or CustomContainer", p.ContainerType)
	}
	if p.CustomContainerTemplate != nil && s.ContainerType != pool.CustomContainer {
		return s, fieldError("properties.customContainerTemplate", "only CustomContainer pools have one")
	}
	if t := p.PoolManagementType; t != "" && !strings.EqualFold(t, "Dynamic") {
		return s, fieldError("properties.poolManagementType", "%q: only Dynamic is supported", t)
	}
	if sc := p.ScaleConfiguration; sc != nil {
		if v := sc.MaxConcurrentSessions; v != nil {
			if *v < 1 || *v > 10000 {
				return s, fieldError("properties.scaleConfiguration.maxConcurrentSessions", "%d: want 1 to 10000", *v)
			}
			s.MaxConcurrentSessions = *v
		}
		if v := sc.ReadySessionInstances; v != nil {
			if *v < 0 || *v > 1000 {
				return s, fieldError("properties.scaleConfiguration.readySessionInstances", "%d: want 0 to 1000", *v)
			}
			s.ReadySessionInstances = *v
		}
	}
	if dp := p.DynamicPoolConfiguration; dp != nil {
		if v := dp.CooldownPeriodInSeconds; v != nil {
			if *v < 1 || *v > 86400 {
				return s, fieldError("properties.dynamicPoolConfiguration.cooldownPeriodInSeconds", "%d: want 1 to 86400 (Azure: 300 to 3600; shorter is for development)", *v)
			}
			s.CooldownPeriod = time.Duration(*v) * time.Second
		}
		if t := dp.ExecutionType; t != "" && !strings.EqualFold(t, "Timed") {
			return s, fieldError("properties.dynamicPoolConfiguration.executionType", "%q: want Timed", t)
		}
		if lc := dp.LifecycleConfiguration; lc != nil {
			f := "properties.dynamicPoolConfiguration.lifecycleConfiguration"
			switch strings.ToLower(lc.LifecycleType) {
			case "", "timed":
				s.LifecycleType = "Timed"
			case "oncontainerexit":
				if s.ContainerType != pool.CustomContainer {
					return s, fieldError(f+".lifecycleType", "OnContainerExit applies to CustomContainer pools only")
				}
				if lc.CooldownPeriodInSeconds != nil || dp.CooldownPeriodInSeconds != nil {
					return s, fieldError(f+".cooldownPeriodInSeconds", "not allowed with lifecycleType OnContainerExit (use maxAlivePeriodInSeconds)")
				}
				s.LifecycleType, s.CooldownPeriod, s.MaxAlivePeriod = pool.LifecycleOnContainerExit, 0, DefaultMaxAlivePeriod
			default:
				return s, fieldError(f+".lifecycleType", "%q: want Timed or OnContainerExit", lc.LifecycleType)
			}
			if v := lc.CooldownPeriodInSeconds; v != nil {
				if *v < 1 || *v > 86400 {
					return s, fieldError(f+".cooldownPeriodInSeconds", "%d: want 1 to 86400 (Azure: 300 to 3600; shorter is for development)", *v)
				}
				s.CooldownPeriod = time.Duration(*v) * time.Second
			}
			if v := lc.MaxAlivePeriodInSeconds; v != nil {
				if *v < 1 || *v > 30*86400 {
					return s, fieldError(f+".maxAlivePeriodInSeconds", "%d: want 1 to 2592000", *v)
				}
				s.MaxAlivePeriod = time.Duration(*v) * time.Second
			}
		}
	}
	if n := p.SessionNetworkConfiguration; n != nil {
		switch strings.ToLower(n.Status) {
		case "", "egressdisabled":
			if len(n.AllowedCIDRs)+len(n.AllowedDomains) > 0 {
				return s, fieldError("properties.sessionNetworkConfiguration", "allowedCidrs and allowedDomains need status EgressEnabled")
			}
		case "egressenabled":
			s.Network.Egress = true
			for i, c := range n.AllowedCIDRs {
				p, err := netip.ParsePrefix(c)
				if err != nil {
					return s, fieldError(fmt.Sprintf("properties.sessionNetworkConfiguration.allowedCidrs[%d]", i), "%q: want an IPv4 CIDR such as 203.0.113.0/24", c)
				}
				s.Network.AllowCIDRs = append(s.Network.AllowCIDRs, p)
			}
			s.Network.AllowDomains = n.AllowedDomains
			if _, err := (netns.Policy{Enabled: true, AllowCIDRs: s.Network.AllowCIDRs, AllowDomains: s.Network.AllowDomains}).Validate(); err != nil {
				return s, fieldError("properties.sessionNetworkConfiguration", "%v", err)
			}
		default:
			return s, fieldError("properties.sessionNetworkConfiguration.status", "%q: want EgressDisabled or EgressEnabled", n.Status)
		}
	}
	o := d.Sessiond
	switch o.Runtime {
	case "", "runsc", "runc":
		s.Runtime = o.Runtime
	default:
		return s, fieldError("sessiond.runtime", "%q: want runsc or runc", o.Runtime)
	}
	if o.Image != "" {
		s.Image = o.Image
	}
	if o.CPU < 0 || o.CPU > 64 || math.IsNaN(o.CPU) {
		return s, fieldError("sessiond.cpu", "%v: want 0.01 to 64 cores", o.CPU)
	}
	if o.CPU > 0 {
		s.Limits.CPUMillis = int64(math.Round(o.CPU * 1000))
		if s.Limits.CPUMillis < 10 {
			return s, fieldError("sessiond.cpu", "%v: want at least 0.01 cores", o.CPU)
		}
	}
	var err error
	if s.Limits.MemoryBytes, err = parseQuantity(o.Memory, 32<<20); err != nil {
		return s, fieldError("sessiond.memory", "%v", err)
	}
	if s.Limits.DiskBytes, err = parseQuantity(o.Disk, 1<<20); err != nil {
		return s, fieldError("sessiond.disk", "%v", err)
	}
	if o.Pids < 0 || (o.Pids > 0 && o.Pids < 8) {
		return s, fieldError("sessiond.pids", "%d: want at least 8", o.Pids)
	}
	s.Limits.Pids = o.Pids
	if s.ContainerType == pool.PythonLTS {
		s.WarmupCode = pool.DefaultWarmupCode
	}
	if o.WarmupCode != nil {
		if s.ContainerType != pool.PythonLTS && *o.WarmupCode != "" {
			return s, fieldError("sessiond.warmupCode", "only PythonLTS pools run warm-up code")
		}
		s.WarmupCode = *o.WarmupCode
	}
	if v := o.ExecutionTimeoutCapInSeconds; v != 0 {
		if v < 1 || v > 3600 {
			return s, fieldError("sessiond.executionTimeoutCapInSeconds", "%d: want 1 to 3600", v)
		}
		s.ExecutionTimeoutCap = time.Duration(v) * time.Second
	}
	if o.InsecureRegistry && s.ContainerType != pool.CustomContainer {
		return s, fieldError("sessiond.insecureRegistry", "only CustomContainer pools pull images")
	}
	if s.ContainerType == pool.CustomContainer {
		if err := d.containerSpec(&s); err != nil {
			return s, err
		}
	}
	return s, nil
}

// parseQuantity parses a Kubernetes-style byte quantity ("512Mi", "1Gi", "1G", "1048576")
// of at least min; "" is 0 (the default).
func parseQuantity(q string, min int64) (int64, error) {
	if q == "" {
		return 0, nil
	}
	units := []struct {
		suffix string
		mult   int64
	}{{"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30}, {"Ti", 1 << 40}, {"K", 1e3}, {"M", 1e6}, {"G", 1e9}, {"T", 1e12}}
	num, mult := q, int64(1)
	for _, u := range units {
		if strings.HasSuffix(q, u.suffix) {
			num, mult = strings.TrimSuffix(q, u.suffix), u.mult
			break
		}
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || f < 0 || math.IsNaN(f) || math.IsInf(f, 0) || f*float64(mult) > float64(1<<50) {
		return 0, fmt.Errorf("%q: want a size like 512Mi, 1Gi or 1073741824", q)
	}
	n := int64(f * float64(mult))
	if n < min {
		return 0, fmt.Errorf("%q is below the minimum of %d bytes", q, min)
	}
	return n, nil
}
