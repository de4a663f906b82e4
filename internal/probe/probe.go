// Package probe checks the health of a custom container inside a sandbox the way Azure
// Container Apps session pools do (azure-api.md §4.4): Startup and Liveness probes that
// send an HTTP GET to a port, or open a TCP connection to it, with Azure's thresholds,
// periods and defaults. Every attempt goes through the sandbox's agent
// (agentapi.Client.DialTunnel), so probing needs no IP networking from the host.
//
// The Probe type is spelled as in ARM's customContainerTemplate.containers[].probes[], so
// that pool configuration embeds it as is. The package decides health only; what follows
// (a sandbox joining the ready queue, a session being ended) is the pool's business.
//
// Imported by the control plane (config, pool); it imports agentapi and errkind.
package probe

import (
	"fmt"
	"strings"
	"time"

	"github.com/sessiond/sessiond/internal/agentapi"
	"github.com/sessiond/sessiond/internal/errkind"
)

// Type says what a probe decides. Azure has no Readiness probes for sessions.
type Type string

const (
	// Startup probes decide when a new sandbox's container is up: until one succeeds the
	// sandbox does not serve; if it fails, the sandbox is discarded.
	Startup Type = "Startup"
	// Liveness probes watch a running container; when one fails, its session ends.
	Liveness Type = "Liveness"
)

// Scheme is the protocol of an httpGet probe.
type Scheme string

const (
	SchemeHTTP  Scheme = "HTTP"
	SchemeHTTPS Scheme = "HTTPS" // certificates are not verified, as in Kubernetes
)

// Probe is one entry of a container's probes, with Azure's field names. Zero numeric
// fields take Azure's defaults (WithDefaults). Exactly one of HTTPGet and TCPSocket is set.
type Probe struct {
	Type      Type       `json:"type" yaml:"type"`
	HTTPGet   *HTTPGet   `json:"httpGet,omitempty" yaml:"httpGet,omitempty"`
	TCPSocket *TCPSocket `json:"tcpSocket,omitempty" yaml:"tcpSocket,omitempty"`
	// InitialDelaySeconds passes before the first attempt: 0–60, default 0.
	InitialDelaySeconds int `json:"initialDelaySeconds,omitempty" yaml:"initialDelaySeconds,omitempty"`
	// PeriodSeconds separates the starts of two attempts: 1–240, default 10.
	PeriodSeconds int `json:"periodSeconds,omitempty" yaml:"periodSeconds,omitempty"`
	// TimeoutSeconds bounds one attempt: 1–240, default 1.
	TimeoutSeconds int `json:"timeoutSeconds,omitempty" yaml:"timeoutSeconds,omitempty"`
	// FailureThreshold consecutive failed attempts fail the probe: 1–10, default 3.
	FailureThreshold int `json:"failureThreshold,omitempty" yaml:"failureThreshold,omitempty"`
	// SuccessThreshold consecutive successes pass it; Azure allows only 1 for Startup and
	// Liveness probes, the default.
	SuccessThreshold int `json:"successThreshold,omitempty" yaml:"successThreshold,omitempty"`
	// TerminationGracePeriodSeconds is how long a container whose liveness probe failed
	// gets to stop before it is killed: 0–3600, 0 meaning the pool's default. The
	// probe runner does not use it; the pool does.
	TerminationGracePeriodSeconds int `json:"terminationGracePeriodSeconds,omitempty" yaml:"terminationGracePeriodSeconds,omitempty"`
}

// HTTPGet probes with GET Path on Port; any status from 200 to 399 is a success.
type HTTPGet struct {
	// Path, default "/", may carry a query string.
	Path string `json:"path,omitempty" yaml:"path,omitempty"`
	Port int    `json:"port" yaml:"port"`
	// Host is sent as the Host header (default 127.0.0.1:Port). The connection always
	// goes to the sandbox's own loopback: a sandbox cannot be made to probe elsewhere.
	Host        string       `json:"host,omitempty" yaml:"host,omitempty"`
	HTTPHeaders []HTTPHeader `json:"httpHeaders,omitempty" yaml:"httpHeaders,omitempty"`
	// Scheme is HTTP (default) or HTTPS.
	Scheme Scheme `json:"scheme,omitempty" yaml:"scheme,omitempty"`
}

// HTTPHeader is a header an httpGet probe sends. A Host header replaces HTTPGet.Host.
type HTTPHeader struct {
	Name  string `json:"name" yaml:"name"`
	Value string `json:"value" yaml:"value"`
}

// TCPSocket probes by opening a connection to Port: the connect succeeding is a success.
type TCPSocket struct {
	Port int `json:"port" yaml:"port"`
	// Host is accepted for compatibility and ignored: the connection always goes to the
	// sandbox's own loopback.
	Host string `json:"host,omitempty" yaml:"host,omitempty"`
}

// Defaults and bounds, from Azure's ARM specification of session pool probes.
const (
	DefaultPeriodSeconds    = 10
	DefaultTimeoutSeconds   = 1
	DefaultFailureThreshold = 3
	DefaultSuccessThreshold = 1

	MaxInitialDelaySeconds           = 60
	MaxPeriodSeconds                 = 240
	MaxTimeoutSeconds                = 240
	MaxFailureThreshold              = 10
	MaxTerminationGracePeriodSeconds = 3600

	// MaxHTTPHeaders caps a probe's headers, and MaxHeaderBytes one header's name and
	// value together; MaxPathBytes caps the path.
	MaxHTTPHeaders = 16
	MaxHeaderBytes = 4096
	MaxPathBytes   = 2048
)

// WithDefaults returns p with zero fields replaced by Azure's defaults and its type and
// scheme spelled canonically (Azure accepts any case).
func (p Probe) WithDefaults() Probe {
	for _, t := range []Type{Startup, Liveness} {
		if strings.EqualFold(string(p.Type), string(t)) {
			p.Type = t
		}
	}
	if p.PeriodSeconds == 0 {
		p.PeriodSeconds = DefaultPeriodSeconds
	}
	if p.TimeoutSeconds == 0 {
		p.TimeoutSeconds = DefaultTimeoutSeconds
	}
	if p.FailureThreshold == 0 {
		p.FailureThreshold = DefaultFailureThreshold
	}
	if p.SuccessThreshold == 0 {
		p.SuccessThreshold = DefaultSuccessThreshold
	}
	if h := p.HTTPGet; h != nil {
		c := *h
		if c.Path == "" {
			c.Path = "/"
		} else if !strings.HasPrefix(c.Path, "/") {
			c.Path = "/" + c.Path
		}
		if c.Scheme == "" || strings.EqualFold(string(c.Scheme), string(SchemeHTTP)) {
			c.Scheme = SchemeHTTP
		} else if strings.EqualFold(string(c.Scheme), string(SchemeHTTPS)) {
			c.Scheme = SchemeHTTPS
		}
		p.HTTPGet = &c
	}
	return p
}

// Validate checks p against Azure's rules. Errors are Invalid, with a public message
// naming the field.
func (p Probe) Validate() error {
	p = p.WithDefaults()
	if p.Type != Startup && p.Type != Liveness {
		return invalid("type", "%q is not a probe type (Startup or Liveness)", p.Type)
	}
	if (p.HTTPGet == nil) == (p.TCPSocket == nil) {
		return invalid("", "exactly one of httpGet and tcpSocket must be set")
	}
	for _, r := range []struct {
		field     string
		v, lo, hi int
	}{
		{"initialDelaySeconds", p.InitialDelaySeconds, 0, MaxInitialDelaySeconds},
		{"periodSeconds", p.PeriodSeconds, 1, MaxPeriodSeconds},
		{"timeoutSeconds", p.TimeoutSeconds, 1, MaxTimeoutSeconds},
		{"failureThreshold", p.FailureThreshold, 1, MaxFailureThreshold},
		{"successThreshold", p.SuccessThreshold, 1, 1},
		{"terminationGracePeriodSeconds", p.TerminationGracePeriodSeconds, 0, MaxTerminationGracePeriodSeconds},
	} {
		if r.v < r.lo || r.v > r.hi {
			return invalid(r.field, "%d is outside %d-%d", r.v, r.lo, r.hi)
		}
	}
	if t := p.TCPSocket; t != nil {
		if !agentapi.ValidPort(t.Port) {
			return invalid("tcpSocket.port", "%d is not a TCP port (1-65535)", t.Port)
		}
		return validHost("tcpSocket.host", t.Host)
	}
	h := p.HTTPGet
	if !agentapi.ValidPort(h.Port) {
		return invalid("httpGet.port", "%d is not a TCP port (1-65535)", h.Port)
	}
	if h.Scheme != SchemeHTTP && h.Scheme != SchemeHTTPS {
		return invalid("httpGet.scheme", "%q is neither HTTP nor HTTPS", h.Scheme)
	}
	if len(h.Path) > MaxPathBytes {
		return invalid("httpGet.path", "longer than %d bytes", MaxPathBytes)
	}
	for _, c := range h.Path {
		if c <= ' ' || c >= 0x7f {
			return invalid("httpGet.path", "%q holds a space, a control or a non-ASCII character (percent-encode it)", h.Path)
		}
	}
	if err := validHost("httpGet.host", h.Host); err != nil {
		return err
	}
	if len(h.HTTPHeaders) > MaxHTTPHeaders {
		return invalid("httpGet.httpHeaders", "%d headers, above the limit of %d", len(h.HTTPHeaders), MaxHTTPHeaders)
	}
	for i, hd := range h.HTTPHeaders {
		field := fmt.Sprintf("httpGet.httpHeaders[%d]", i)
		if len(hd.Name)+len(hd.Value) > MaxHeaderBytes {
			return invalid(field, "longer than %d bytes", MaxHeaderBytes)
		}
		if hd.Name == "" || strings.IndexFunc(hd.Name, func(c rune) bool { return !isTokenChar(c) }) >= 0 {
			return invalid(field+".name", "%q is not a header name", hd.Name)
		}
		if strings.IndexFunc(hd.Value, func(c rune) bool { return c < ' ' && c != '\t' || c == 0x7f }) >= 0 {
			return invalid(field+".value", "holds a control character")
		}
	}
	return nil
}

func invalid(field, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if field != "" {
		msg = field + ": " + msg
	}
	return errkind.New(errkind.Invalid, "probe: %s", msg)
}

// validHost accepts an empty host or a host name or address, with an optional port.
func validHost(field, h string) error {
	if len(h) > 255 || strings.IndexFunc(h, func(c rune) bool {
		return !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune(".-_:[]", c))
	}) >= 0 {
		return invalid(field, "%q is not a host name", h)
	}
	return nil
}

// isTokenChar reports whether c may appear in an HTTP header name (RFC 9110 §5.6.2).
func isTokenChar(c rune) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("!#$%&'*+-.^_`|~", c)
}

// Port is the sandbox port the probe reaches.
func (p Probe) Port() int {
	if p.HTTPGet != nil {
		return p.HTTPGet.Port
	}
	if p.TCPSocket != nil {
		return p.TCPSocket.Port
	}
	return 0
}

func seconds(n int) time.Duration { return time.Duration(n) * time.Second }
