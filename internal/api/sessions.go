package api

import (
	"cmp"
	"net/http"
	"net/url"
	"slices"
	"strconv"

	"github.com/sessiond/sessiond/internal/errkind"
	"github.com/sessiond/sessiond/internal/pool"
)

// Sessions (azure-api.md §3.2.6, §4.3): GET|DELETE session, GET listSessions, and the
// .management operations. None of them allocates a session.
//
// An identifier with no session: GET session, .management/getSession and
// .management/stopSession answer 400 SessionWithIdentifierNotFound, as the live service
// does (§2.4, §4.3); DELETE session answers 204 as if it had deleted it, because deletion
// is idempotent and LangChain's delete_session (and its context manager) calls
// raise_for_status after a session may well have expired on its own (§13.15).

// sessionPageSize is the page size of both session listings (Azure's, §4.3).
const sessionPageSize = 300

// sessionResource is the data plane's Session (expireAt).
type sessionResource struct {
	Identifier     string `json:"identifier"`
	CreatedAt      string `json:"createdAt"`
	LastAccessedAt string `json:"lastAccessedAt"`
	ExpireAt       string `json:"expireAt"`
	// Etag "represents the underlying container ID": the sandbox's ID.
	Etag string `json:"etag"`
}

func sessionOf(si pool.SessionInfo) sessionResource {
	return sessionResource{Identifier: si.Identifier, CreatedAt: formatTime(si.CreatedAt),
		LastAccessedAt: formatTime(si.LastAccessedAt), ExpireAt: formatTime(si.ExpiresAt), Etag: si.SandboxID}
}

// sessionView is .management's SessionView (expiresAt).
type sessionView struct {
	Identifier     string `json:"identifier"`
	Etag           string `json:"etag"`
	ExpiresAt      string `json:"expiresAt"`
	CreatedAt      string `json:"createdAt"`
	LastAccessedAt string `json:"lastAccessedAt"`
}

func viewOf(si pool.SessionInfo) sessionView {
	return sessionView{Identifier: si.Identifier, Etag: si.SandboxID, ExpiresAt: formatTime(si.ExpiresAt),
		CreatedAt: formatTime(si.CreatedAt), LastAccessedAt: formatTime(si.LastAccessedAt)}
}

// existing leases the call's session without allocating one.
func existing(r *http.Request, c *call) (*pool.Lease, error) {
	lease, err := c.pool.Get(r.Context(), c.identifier)
	if errkind.Is(err, errkind.NotFound) {
		return nil, errSessionNotFound(c.identifier)
	}
	return lease, err
}

// getSession serves GET session.
func (s *Server) getSession(w http.ResponseWriter, r *http.Request) error {
	c := callOf(r)
	lease, err := existing(r, c)
	if err != nil {
		return err
	}
	defer lease.Release()
	return writeJSON(w, http.StatusOK, sessionOf(lease.Session))
}

// deleteSession serves DELETE session: 204, whether or not the session existed.
func (s *Server) deleteSession(w http.ResponseWriter, r *http.Request) error {
	c := callOf(r)
	if err := c.pool.Delete(r.Context(), c.identifier); err != nil && !errkind.Is(err, errkind.NotFound) {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// stopSession serves POST .management/stopSession: 200 text/plain.
func (s *Server) stopSession(w http.ResponseWriter, r *http.Request) error {
	c := callOf(r)
	err := c.pool.Delete(r.Context(), c.identifier)
	if errkind.Is(err, errkind.NotFound) {
		return errSessionNotFound(c.identifier)
	}
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	_, err = w.Write([]byte("Session " + c.identifier + " in session pool " + c.poolName + " stopped."))
	return err
}

// managementGetSession serves POST .management/getSession.
func (s *Server) managementGetSession(w http.ResponseWriter, r *http.Request) error {
	c := callOf(r)
	lease, err := existing(r, c)
	if err != nil {
		return err
	}
	defer lease.Release()
	return writeJSON(w, http.StatusOK, viewOf(lease.Session))
}

// sessionPage returns the page of the pool's sessions that the skip parameter selects,
// oldest first, and the nextLink of the page after it (nil if none).
func sessionPage(r *http.Request, c *call) ([]pool.SessionInfo, int, *string, error) {
	skip := 0
	if v := c.query.get("skip"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return nil, 0, nil, errInvalid("skip", "The skip query parameter must be a non-negative integer; got %q.", v)
		}
		skip = n
	}
	all := c.pool.Sessions()
	slices.SortFunc(all, func(a, b pool.SessionInfo) int {
		return cmp.Or(a.CreatedAt.Compare(b.CreatedAt), cmp.Compare(a.Identifier, b.Identifier))
	})
	total := len(all)
	page := all[min(skip, total):min(skip+sessionPageSize, total)]
	var next *string
	if skip+sessionPageSize < total {
		link := r.URL.EscapedPath() + "?api-version=" + url.QueryEscape(c.apiVersion) + "&skip=" + strconv.Itoa(skip+sessionPageSize)
		next = &link
	}
	return page, total, next, nil
}

// listSessions serves GET listSessions: {"sessions":[Session...],"nextLink"}.
func (s *Server) listSessions(w http.ResponseWriter, r *http.Request) error {
	page, _, next, err := sessionPage(r, callOf(r))
	if err != nil {
		return err
	}
	out := struct {
		Sessions []sessionResource `json:"sessions"`
		NextLink *string           `json:"nextLink"`
	}{Sessions: []sessionResource{}, NextLink: next}
	for _, si := range page {
		out.Sessions = append(out.Sessions, sessionOf(si))
	}
	return writeJSON(w, http.StatusOK, out)
}

// managementListSessions serves POST .management/listSessions:
// {"value":[SessionView...],"count","nextLink"}; count is the number of sessions in the
// pool, not in the page.
func (s *Server) managementListSessions(w http.ResponseWriter, r *http.Request) error {
	page, total, next, err := sessionPage(r, callOf(r))
	if err != nil {
		return err
	}
	out := struct {
		Value    []sessionView `json:"value"`
		Count    int           `json:"count"`
		NextLink *string       `json:"nextLink"`
	}{Value: []sessionView{}, Count: total, NextLink: next}
	for _, si := range page {
		out.Value = append(out.Value, viewOf(si))
	}
	return writeJSON(w, http.StatusOK, out)
}
