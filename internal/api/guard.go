package api

import (
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
)

// The server does not authenticate yet, so the attacker to fear is a web page: a browser
// will send requests to a server on loopback or a private network on the page's behalf.
// The guard refuses the two ways a page can use it:
//
//   - DNS rebinding. A page on attacker.example points its own name at 127.0.0.1 and
//     then talks to the server as its same origin, reading every answer. The Host header
//     still says attacker.example: with Config.AllowedHosts set, such a request gets 421.
//   - Cross-site requests. A form post or a no-cors fetch from another site cannot read
//     the answer, but it can run code, upload or delete files, and allocate sessions.
//     Browsers label these: Sec-Fetch-Site: cross-site, which is refused on every
//     request (GETs allocate sessions too, §13.3), and an Origin header on every
//     state-changing request, whose host must be allowed: in AllowedHosts when that is
//     set, else the request's own host. The port is not compared, as the Host check
//     does not compare it either. Without a preflight a page can only send a body
//     labelled text/plain, application/x-www-form-urlencoded or multipart/form-data;
//     the JSON endpoints refuse those (readJSONBody), as a second line for browsers that
//     send neither header.
//
// The clients of azure-api.md §9 are not browsers and send neither Origin nor
// Sec-Fetch-Site (LangChain.js's undici sends only Sec-Fetch-Mode), so none of this
// touches them. GET /healthz is exempt: it reveals and changes nothing, and health probes
// (Kubernetes among them) address the server by IP.
//
// net/http's CrossOriginProtection is close but not used: it compares origins with their
// ports and knows nothing of AllowedHosts, so a UI served from an allowed host on another
// port could not be allowed by host.

// checkRequest applies the guard to r, whose route is rt.
func (s *Server) checkRequest(r *http.Request, rt *route) error {
	if rt.anyHost {
		return nil
	}
	host := hostOnly(r.Host)
	if len(s.allowedHosts) > 0 && !slices.Contains(s.allowedHosts, host) {
		return errMisdirected(host)
	}
	if strings.EqualFold(r.Header.Get("Sec-Fetch-Site"), "cross-site") {
		return errCrossSite("The request comes from a page of another site (Sec-Fetch-Site: cross-site).")
	}
	if !stateChanging(r.Method) {
		return nil
	}
	origin, ok := r.Header["Origin"]
	if !ok {
		return nil
	}
	o := ""
	if len(origin) == 1 {
		o = originHost(origin[0])
	}
	allowed := o != "" && o == host
	if len(s.allowedHosts) > 0 {
		allowed = slices.Contains(s.allowedHosts, o)
	}
	if !allowed {
		return errCrossSite("The request comes from a page of another origin (Origin: %.200q), which may not change anything here.",
			strings.Join(origin, ", "))
	}
	return nil
}

func stateChanging(method string) bool {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return false
	}
	return true
}

// hostOnly returns the host of a Host header or of an AllowedHosts entry, without its
// port and IPv6 brackets, lower-cased, without a final dot ("Example.COM.:443" and
// "example.com" are the same host).
func hostOnly(hostport string) string {
	h := hostport
	if host, _, err := net.SplitHostPort(hostport); err == nil {
		h = host
	}
	h = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
	return strings.TrimSuffix(strings.ToLower(h), ".")
}

// originHost returns the host of an Origin header ("scheme://host[:port]"), or "" for an
// opaque origin ("null") or a malformed one.
func originHost(origin string) string {
	u, err := url.Parse(origin)
	if err != nil || u.Scheme == "" || u.Host == "" {
		return ""
	}
	return hostOnly(u.Host)
}

// allowedHosts normalizes Config.AllowedHosts, dropping empty entries.
func allowedHosts(hosts []string) []string {
	var out []string
	for _, h := range hosts {
		if h = hostOnly(strings.TrimSpace(h)); h != "" {
			out = append(out, h)
		}
	}
	return out
}
