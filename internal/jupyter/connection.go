package jupyter

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
)

// ConnectionInfo is a kernel connection file: where the kernel listens and the key that
// signs its messages. Transports: TCP on a loopback address, and ipc (unix sockets named
// IP-PORT, IP an absolute path prefix).
type ConnectionInfo struct {
	Transport       string `json:"transport"`
	IP              string `json:"ip"`
	ShellPort       int    `json:"shell_port"`
	IOPubPort       int    `json:"iopub_port"`
	StdinPort       int    `json:"stdin_port"`
	ControlPort     int    `json:"control_port"`
	HBPort          int    `json:"hb_port"`
	Key             string `json:"key"`
	SignatureScheme string `json:"signature_scheme"`
	KernelName      string `json:"kernel_name,omitempty"`
}

// Ports are the five ports of a kernel, in connection-file order.
type Ports struct {
	Shell, IOPub, Stdin, Control, HB int
}

// NewConnectionInfo returns a connection for a kernel listening on 127.0.0.1 at ports,
// signed with a fresh random HMAC-SHA256 key.
func NewConnectionInfo(ports Ports) (ConnectionInfo, error) {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return ConnectionInfo{}, fmt.Errorf("making a kernel key: %w", err)
	}
	return ConnectionInfo{
		Transport:       "tcp",
		IP:              "127.0.0.1",
		ShellPort:       ports.Shell,
		IOPubPort:       ports.IOPub,
		StdinPort:       ports.Stdin,
		ControlPort:     ports.Control,
		HBPort:          ports.HB,
		Key:             hex.EncodeToString(key),
		SignatureScheme: "hmac-sha256",
	}, nil
}

// NewIPCConnectionInfo returns a connection for a kernel listening on unix sockets named
// prefix-1 to prefix-5 (prefix an absolute path), signed with a fresh random key. Unlike
// TCP ports, the names cannot be taken by another process between picking and binding
// when prefix is in a directory of the kernel's own.
func NewIPCConnectionInfo(prefix string) (ConnectionInfo, error) {
	c, err := NewConnectionInfo(Ports{Shell: 1, IOPub: 2, Stdin: 3, Control: 4, HB: 5})
	if err != nil {
		return ConnectionInfo{}, err
	}
	c.Transport, c.IP = "ipc", prefix
	return c, c.Validate()
}

// maxSocketPath is the longest unix socket path Linux accepts (sun_path less its NUL).
const maxSocketPath = 107

// FreePorts picks five distinct free TCP ports on 127.0.0.1 by binding and releasing
// them. It prefers ports below Linux's ephemeral range (32768 and up), which outgoing
// connections (the client's own, among others) never take. Another process may still
// take a port before the kernel binds it; the kernel then fails to start and the caller
// retries with fresh ports.
func FreePorts() (Ports, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ps [5]int
	var rnd [2]byte
	for i := range ps {
		var l net.Listener
		for try := 0; l == nil && try < 20; try++ {
			_, _ = rand.Read(rnd[:])
			port := 20000 + int(binary.BigEndian.Uint16(rnd[:]))%12768
			l, _ = net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		}
		if l == nil {
			var err error
			if l, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
				return Ports{}, fmt.Errorf("picking kernel ports: %w", err)
			}
		}
		ls = append(ls, l)
		ps[i] = l.Addr().(*net.TCPAddr).Port
	}
	return Ports{Shell: ps[0], IOPub: ps[1], Stdin: ps[2], Control: ps[3], HB: ps[4]}, nil
}

// Validate checks that c describes a kernel this client can reach.
func (c ConnectionInfo) Validate() error {
	switch c.Transport {
	case "tcp":
		if ip := net.ParseIP(c.IP); ip == nil || !ip.IsLoopback() {
			return fmt.Errorf("invalid connection: ip %q is not a loopback address", c.IP)
		}
	case "ipc":
		if !filepath.IsAbs(c.IP) || filepath.Clean(c.IP) != c.IP {
			return fmt.Errorf("invalid connection: ipc prefix %q is not a clean absolute path", c.IP)
		}
	default:
		return fmt.Errorf("invalid connection: transport %q, want tcp or ipc", c.Transport)
	}
	for _, p := range []int{c.ShellPort, c.IOPubPort, c.StdinPort, c.ControlPort, c.HBPort} {
		if p <= 0 || p > 65535 {
			return fmt.Errorf("invalid connection: port %d", p)
		}
		if _, addr := c.Endpoint(p); c.Transport == "ipc" && len(addr) > maxSocketPath {
			return fmt.Errorf("invalid connection: socket path %q longer than %d bytes", addr, maxSocketPath)
		}
	}
	if c.SignatureScheme != "hmac-sha256" {
		return fmt.Errorf("invalid connection: signature scheme %q, want hmac-sha256", c.SignatureScheme)
	}
	if c.Key == "" {
		return errors.New("invalid connection: empty key (unsigned messages are not accepted)")
	}
	return nil
}

// Endpoint returns the network ("tcp" or "unix") and address of the kernel's socket at
// port, as net.Dial takes them.
func (c ConnectionInfo) Endpoint(port int) (network, addr string) {
	if c.Transport == "ipc" {
		return "unix", c.IP + "-" + strconv.Itoa(port)
	}
	return "tcp", net.JoinHostPort(c.IP, strconv.Itoa(port))
}

// URL returns the ZeroMQ endpoint of the kernel's socket at port (tcp://HOST:PORT or
// ipc://PATH).
func (c ConnectionInfo) URL(port int) string {
	_, addr := c.Endpoint(port)
	return c.Transport + "://" + addr
}

// WriteFile writes c as a connection file at path, readable by its owner only, and
// hands it to uid:gid when chown is set. It replaces no existing file: path must be new.
func (c ConnectionInfo) WriteFile(path string, chown bool, uid, gid int) error {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding the connection file: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return fmt.Errorf("writing the connection file: %w", err)
	}
	if chown {
		if err := f.Chown(uid, gid); err != nil {
			f.Close()
			os.Remove(path)
			return fmt.Errorf("handing the connection file to the kernel user: %w", err)
		}
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("writing the connection file: %w", err)
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return fmt.Errorf("writing the connection file: %w", err)
	}
	return nil
}

// ReadConnectionFile reads and validates a connection file.
func ReadConnectionFile(path string) (ConnectionInfo, error) {
	b, err := os.ReadFile(filepath.Clean(path))
	if err != nil {
		return ConnectionInfo{}, fmt.Errorf("reading the connection file: %w", err)
	}
	var c ConnectionInfo
	if err := json.Unmarshal(b, &c); err != nil {
		return ConnectionInfo{}, fmt.Errorf("decoding the connection file: %w", err)
	}
	if err := c.Validate(); err != nil {
		return ConnectionInfo{}, err
	}
	return c, nil
}
