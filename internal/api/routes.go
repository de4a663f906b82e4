package api

import (
	"net/http"
	"net/url"
	"strings"

	"github.com/sessiond/sessiond/internal/auth"
)

// mounts are the prefixes a pool's endpoint is served under: the Azure-shaped one, which
// clients are given as their "pool management endpoint", and a short one. Clients treat the
// endpoint as an opaque prefix (azure-api.md §1).
var mounts = []string{
	"/subscriptions/{sub}/resourceGroups/{rg}/sessionPools/{pool}",
	"/pools/{pool}",
}

// scope says what a route needs before its handler runs.
type scope int

const (
	// scopeServer: no pool (GET /healthz, unknown paths).
	scopeServer scope = iota
	// scopePool: the pool named in the path; no identifier (pool-wide operations).
	scopePool
	// scopeSession: the pool and a valid identifier query parameter.
	scopeSession
)

// route is one operation of the wire contract.
type route struct {
	method string
	// path is relative to the pool endpoint (to the server root for scopeServer).
	path string
	// op names the operation in logs (Azure's operationId where it has one).
	op    string
	scope scope
	// versionOptional: the request may omit api-version (the pre-GA python/* API had none).
	versionOptional bool
	// management routes also serve custom-container pools; on those pools every other
	// request is forwarded to the container (proxy.go).
	management bool
	// anyHost routes skip the guard (guard.go): any Host, any origin.
	anyHost bool
	// role is required of the caller when authentication is on: on the pool of the path,
	// or on every pool for a path without one. "" means SessionExecutor on the path's
	// pool, or any authenticated caller without one.
	role auth.Role
	// legacy serves api-versions before 2024-10-02-preview on paths both generations share;
	// nil means current serves every api-version.
	legacy  handlerFunc
	current handlerFunc
}

// routes is the data plane's route table: every operation of azure-api.md §3 and §4.3.
// Paths are matched first (net/http patterns, after normalize), then the api-version picks
// the generation where a path exists in both (§13.2).
//
// GET and DELETE files/{path...} take the rest of the path, because LangChain sends nested
// names unescaped (files/content/sub/x.csv). Three operations share GET files/{path...}:
// legacy files/content/{name}, new files/{name}/content, and files/{name} (metadata). A
// name that ends in /content is the new download, one that starts with content/ the legacy
// one, anything else metadata; a path that is both (files/content/content) goes to the
// generation of the api-version. See fileGet.
func (s *Server) routes() []route {
	return []route{
		// Legacy generation (2024-02-02-preview, 2024-08-02-preview): §3.1.
		{method: "POST", path: "code/execute", op: "CodeExecute", scope: scopeSession, current: s.codeExecute},
		{method: "POST", path: "files/upload", op: "FilesUpload", scope: scopeSession, current: s.uploadLegacy},

		// Shared paths: the shape of the response follows the api-version (§13.2).
		{method: "GET", path: "files", op: "SessionResourceFiles_List", scope: scopeSession,
			legacy: s.listFilesLegacy, current: s.listFiles},
		{method: "GET", path: "files/{path...}", op: "SessionResourceFiles_Get", scope: scopeSession,
			legacy: s.fileGet(true), current: s.fileGet(false)},
		{method: "DELETE", path: "files/{path...}", op: "SessionResourceFiles_Delete", scope: scopeSession,
			legacy: s.deleteFileLegacy, current: s.deleteFile},

		// New generation (2024-10-02-preview and later): §3.2.
		{method: "POST", path: "files", op: "SessionResourceFiles_Upload", scope: scopeSession, current: s.upload},
		{method: "POST", path: "executions", op: "CodeExecution_Execute", scope: scopeSession, current: s.execute},
		{method: "GET", path: "executions/{id}", op: "CodeExecution_Get", scope: scopeSession, current: s.getExecution},
		{method: "GET", path: "session", op: "SessionManagement_Get", scope: scopeSession, current: s.getSession},
		{method: "DELETE", path: "session", op: "SessionManagement_Delete", scope: scopeSession, current: s.deleteSession},
		{method: "GET", path: "listSessions", op: "ListSessions_Get", scope: scopePool, current: s.listSessions},
		{method: "GET", path: "metadata", op: "SessionPoolMetadata_Get", scope: scopePool, current: s.metadata},

		// Session pool management (§3.2.6, §4.3): also on custom-container pools.
		{method: "POST", path: ".management/stopSession", op: "SessionPoolManagement_StopSession", scope: scopeSession,
			management: true, current: s.stopSession},
		{method: "POST", path: ".management/getSession", op: "SessionPoolManagement_GetSession", scope: scopeSession,
			management: true, current: s.managementGetSession},
		{method: "POST", path: ".management/listSessions", op: "SessionPoolManagement_ListSessions", scope: scopePool,
			management: true, current: s.managementListSessions},

		// Pre-GA API (§3.4): POST python/execute took {"properties":{..., "pythonCode"}} and no
		// api-version; it is the legacy execute with the pythonCode alias.
		{method: "POST", path: "python/execute", op: "PythonExecute", scope: scopeSession, versionOptional: true,
			current: s.codeExecute},
	}
}

// buildMux registers every route under every mount, plus the fallbacks that answer unknown
// paths (404) and known paths with the wrong method (405) in the error envelope.
func (s *Server) buildMux() *http.ServeMux {
	mux := http.NewServeMux()
	s.fallbacks = map[string]bool{}
	registered := map[string]bool{}
	register := func(pattern string, h http.Handler) {
		registered[pattern] = true
		mux.Handle(pattern, h)
	}
	// On a custom-container pool, what no route matches goes to the container (proxy.go),
	// except under .management/.
	noRoute := route{op: "NoRoute", scope: scopePool, versionOptional: true, current: s.noRoute(mux)}
	fallback := func(pattern string, rt route) {
		if !registered[pattern] {
			s.fallbacks[pattern] = true
			register(pattern, s.adapt(rt))
		}
	}
	register("GET /healthz", s.adapt(route{op: "Health", scope: scopeServer, anyHost: true, current: s.health}))
	s.registerObserve(register)
	if s.cfg.Manage != nil {
		for _, rt := range s.manageRoutes() {
			register(rt.method+" /"+rt.path, s.adapt(rt))
		}
	}
	for _, m := range mounts {
		for _, rt := range s.routes() {
			register(rt.method+" "+m+"/"+rt.path, s.adapt(rt))
		}
		for _, rt := range s.routes() {
			// ServeMux would redirect "files" to "files/" for a method that has only
			// files/{path...}; answer it here instead.
			if parent, ok := strings.CutSuffix(rt.path, "/{path...}"); ok {
				fallback(rt.method+" "+m+"/"+parent, noRoute)
			}
		}
		// Any other path or method under a mount: 404 for an unknown pool, else 405 or 404.
		// No api-version is asked of a request that matches nothing.
		fallback(m, noRoute)
		fallback(m+"/{rest...}", noRoute)
	}
	fallback("/", route{op: "NoRoute", scope: scopeServer, current: s.noRoute(mux)})
	return mux
}

// routeMethods are the methods routes use, probed to fill a 405's Allow header.
var routeMethods = []string{"GET", "POST", "PUT", "PATCH", "DELETE"}

// noRoute answers a request no route matched: 405 with Allow if the path exists with
// other methods, 404 otherwise.
func (s *Server) noRoute(mux *http.ServeMux) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		var allow []string
		for _, m := range routeMethods {
			probe := *r
			probe.Method = m
			if _, pattern := mux.Handler(&probe); pattern != "" && !s.fallbacks[pattern] {
				allow = append(allow, m)
			}
		}
		if len(allow) > 0 {
			return errMethodNotAllowed(r.Method, allow)
		}
		return errNoSuchOperation(r.URL.Path)
	}
}

// normalize returns r with a path the route table matches, tolerating what real clients
// and Microsoft's own examples send (azure-api.md §1, §3.1, §13.1):
//
//   - repeated slashes collapse and a trailing slash goes (SK strips "python/execute" from
//     a configured endpoint and may leave "//"; "code/execute/" is seen);
//   - "identifier/<id>/" right after the pool endpoint is dropped (a Learn example puts it
//     there); <id> becomes the identifier query parameter if the query has none;
//   - "python/execute/" right after the pool endpoint is dropped when more follows (the
//     pre-GA endpoint form, kept in a client's configuration);
//   - the literals subscriptions, resourceGroups and sessionPools match in any case (ARM
//     paths are case-insensitive);
//   - "." and ".." segments are escaped instead of resolved, so that ServeMux does not
//     redirect them: as file names they are refused with a 400, elsewhere they match
//     nothing.
//
// It works on the escaped path, so an escaped slash inside a file name stays one segment.
func normalize(r *http.Request) *http.Request {
	escaped := r.URL.EscapedPath()
	var segs []string
	for seg := range strings.SplitSeq(escaped, "/") {
		switch seg {
		case "":
			continue
		case ".":
			seg = "%2E"
		case "..":
			seg = "%2E%2E"
		}
		segs = append(segs, seg)
	}
	query := r.URL.RawQuery
	if n := mountLen(segs); n > 0 {
		rest := segs[n:]
		if len(rest) > 2 && rest[0] == "identifier" {
			if parseQuery(query).get("identifier") == "" {
				query = addQuery(query, "identifier="+rest[1])
			}
			rest = rest[2:]
		}
		if len(rest) > 2 && rest[0] == "python" && rest[1] == "execute" {
			rest = rest[2:]
		}
		segs = append(segs[:n:n], rest...)
	}
	clean := "/" + strings.Join(segs, "/")
	if clean == escaped && query == r.URL.RawQuery {
		return r
	}
	r2 := new(http.Request)
	*r2 = *r
	u := *r.URL
	u.RawQuery = query
	if p, err := url.PathUnescape(clean); err == nil {
		u.Path, u.RawPath = p, clean
	}
	r2.URL = &u
	return r2
}

// mountLen returns how many leading segments of segs are a mount (canonicalizing the
// Azure mount's literals in place), or 0.
func mountLen(segs []string) int {
	switch {
	case len(segs) >= 2 && segs[0] == "pools":
		return 2
	case len(segs) >= 6 && strings.EqualFold(segs[0], "subscriptions") &&
		strings.EqualFold(segs[2], "resourceGroups") && strings.EqualFold(segs[4], "sessionPools"):
		segs[0], segs[2], segs[4] = "subscriptions", "resourceGroups", "sessionPools"
		return 6
	}
	return 0
}

func addQuery(raw, kv string) string {
	if raw == "" {
		return kv
	}
	return raw + "&" + kv
}
