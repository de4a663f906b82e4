package api

import (
	"encoding/json"
	"net/http"

	"github.com/sessiond/sessiond/internal/agentapi"
)

// The legacy execute (azure-api.md §3.1.1, §3.1.2): POST code/execute, and the pre-GA
// POST python/execute. The body is {"properties":{...}} (a flat body is accepted too);
// the response always carries status, stdout, stderr, result, executionResult and
// executionTimeInMilliseconds inside properties, because Semantic Kernel Python raises
// KeyError on any that is missing and NodeLTS clients read executionResult.

// legacyExecution is code/execute's response. The $id members are Newtonsoft reference
// IDs, as Azure sends them.
type legacyExecution struct {
	ID         string                    `json:"$id"`
	Properties legacyExecutionProperties `json:"properties"`
}

type legacyExecutionProperties struct {
	ID string `json:"$id"`
	// Status is "Success" or "Failure" (AutoGen tests for these substrings).
	Status                      string          `json:"status"`
	Stdout                      string          `json:"stdout"`
	Stderr                      string          `json:"stderr"`
	Result                      json.RawMessage `json:"result"`
	ExecutionResult             json.RawMessage `json:"executionResult"`
	ExecutionTimeInMilliseconds int64           `json:"executionTimeInMilliseconds"`
}

// codeExecute serves POST code/execute and POST python/execute.
func (s *Server) codeExecute(w http.ResponseWriter, r *http.Request) error {
	o, _, err := s.runExecution(r, callOf(r), true)
	if err != nil {
		return err
	}
	w.Header().Set("operation-id", o.id)
	return writeJSON(w, http.StatusOK, o.legacy())
}

// legacy renders o for code/execute: Azure's new-API failure states become "Failure";
// on Shell pools exit status 0 is "Success" and any other "Failure".
func (o outcome) legacy() legacyExecution {
	status := legacySuccess
	switch {
	case o.shell && o.status != "0", !o.shell && o.status != agentapi.StatusSucceeded:
		status = legacyFailure
	}
	result := o.result
	if len(result) == 0 {
		result = json.RawMessage(`""`)
	}
	return legacyExecution{ID: "1", Properties: legacyExecutionProperties{
		ID: "2", Status: status, Stdout: o.stdout, Stderr: o.stderr,
		Result: result, ExecutionResult: result, ExecutionTimeInMilliseconds: o.durationMS,
	}}
}
