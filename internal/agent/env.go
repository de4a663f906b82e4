package agent

import (
	"os"
	"strings"

	"github.com/sessiond/sessiond/internal/errkind"
)

// defaultPath is the PATH of commands when the agent's environment has none.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// baseEnv returns the environment commands start with: the agent's own environ without
// the agent's settings (SESSIOND_*), plus HOME and USER, and LANG and PATH unless set.
func baseEnv(environ []string, home, user string) []string {
	env := make([]string, 0, len(environ)+4)
	hasLang, hasPath := false, false
	for _, kv := range environ {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasPrefix(k, "SESSIOND_"), k == "HOME", k == "USER", k == "":
			continue
		case k == "LANG":
			hasLang = true
		case k == "PATH":
			hasPath = true
		}
		env = append(env, kv)
	}
	env = append(env, "HOME="+home, "USER="+user)
	if !hasLang {
		env = append(env, "LANG=C.UTF-8")
	}
	if !hasPath {
		env = append(env, "PATH="+defaultPath)
	}
	return env
}

// mergeEnv returns base with extra's KEY=VALUE entries added, each replacing base's entry
// of the same key. base is not modified. The entries must have been checked by checkEnv.
func mergeEnv(base, extra []string) []string {
	if len(extra) == 0 {
		return base
	}
	env := make([]string, len(base), len(base)+len(extra))
	copy(env, base)
	at := make(map[string]int, len(base)+len(extra))
	for i, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		at[k] = i
	}
	for _, kv := range extra {
		k, _, _ := strings.Cut(kv, "=")
		if i, ok := at[k]; ok {
			env[i] = kv
			continue
		}
		at[k] = len(env)
		env = append(env, kv)
	}
	return env
}

// checkEnv validates request environment entries: KEY=VALUE, a non-empty key, no NUL.
func checkEnv(env []string) error {
	for _, kv := range env {
		if strings.IndexByte(kv, 0) >= 0 {
			return errkind.New(errkind.Invalid, "env entry %q contains a NUL byte", kv)
		}
		if i := strings.IndexByte(kv, '='); i <= 0 {
			return errkind.New(errkind.Invalid, "env entry %q is not KEY=VALUE", kv)
		}
	}
	return nil
}

// getenv returns the value of key in env (the last entry wins, as mergeEnv leaves none
// duplicated).
func getenv(env []string, key string) string {
	for i := len(env) - 1; i >= 0; i-- {
		if k, v, ok := strings.Cut(env[i], "="); ok && k == key {
			return v
		}
	}
	return ""
}

// lookPath finds the executable file in the directories of pathList, like a shell. A name
// containing a slash is returned as is (relative to the command's working directory).
// Relative PATH entries are ignored: the agent runs as root and resolves names before the
// command's working directory applies.
func lookPath(file, pathList string) (string, error) {
	if strings.Contains(file, "/") {
		return file, nil
	}
	for dir := range strings.SplitSeq(pathList, ":") {
		if !strings.HasPrefix(dir, "/") {
			continue
		}
		p := dir + "/" + file
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
			return p, nil
		}
	}
	return "", errkind.New(errkind.NotFound, "executable %q not found in PATH", file)
}
