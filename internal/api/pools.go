package api

import (
	"fmt"
	"net/http"

	"github.com/sessiond/sessiond/internal/pool"
)

// Pool-wide operations: GET metadata (azure-api.md §3.2.6) and the server's GET /healthz.

type metadataResource struct {
	Runtimes             []nameVersion   `json:"runtimes"`
	PreInstalledPackages []nameVersion   `json:"preInstalledPackages"`
	CreatedAt            string          `json:"createdAt"`
	LastUpdatedAt        string          `json:"lastUpdatedAt"`
	JupyterKernel        *kernelMetadata `json:"jupyterKernel,omitempty"`
}

type nameVersion struct {
	Name    string `json:"name"`
	Version string `json:"version"`
}

type kernelMetadata struct {
	Name        string `json:"name"`
	Version     string `json:"version"`
	ProjectURL  string `json:"projectUrl"`
	Description string `json:"description"`
}

// kernelProjects are the home pages of the kernels sessions run.
var kernelProjects = map[string]string{
	"ipykernel":   "https://github.com/ipython/ipykernel",
	"ijavascript": "https://github.com/n-riesco/ijavascript",
}

func nameVersions(in []pool.NameVersion) []nameVersion {
	out := make([]nameVersion, 0, len(in))
	for _, nv := range in {
		out = append(out, nameVersion{Name: nv.Name, Version: nv.Version})
	}
	return out
}

// metadata serves GET metadata.
func (s *Server) metadata(w http.ResponseWriter, r *http.Request) error {
	c := callOf(r)
	md, err := c.pool.Metadata(r.Context())
	if err != nil {
		return fmt.Errorf("pool metadata: %w", err)
	}
	out := metadataResource{
		Runtimes:             nameVersions(md.Runtimes),
		PreInstalledPackages: nameVersions(md.Packages),
		CreatedAt:            formatTime(md.CreatedAt),
		LastUpdatedAt:        formatTime(md.UpdatedAt),
	}
	if k := md.Kernel; k != nil {
		desc := k.Name
		if k.Language != "" {
			desc = fmt.Sprintf("%s kernel for %s %s", k.Name, k.Language, k.LanguageVersion)
		}
		out.JupyterKernel = &kernelMetadata{Name: k.Name, Version: k.Version, ProjectURL: kernelProjects[k.Name], Description: desc}
	}
	return writeJSON(w, http.StatusOK, out)
}

// health serves GET /healthz: the server answers.
func (s *Server) health(w http.ResponseWriter, r *http.Request) error {
	return writeJSON(w, http.StatusOK, map[string]string{"status": "Healthy"})
}
