package pool

import (
	"fmt"
	"regexp"
	"time"

	"github.com/sessiond/sessiond/internal/errkind"
)

// Lifecycle types (ARM's lifecycleConfiguration.lifecycleType).
const (
	// LifecycleTimed destroys a session after CooldownPeriod without requests (and after
	// MaxAlivePeriod, if set).
	LifecycleTimed = "Timed"
	// LifecycleOnContainerExit keeps a session until its sandbox dies or MaxAlivePeriod
	// passes; there is no cooldown.
	LifecycleOnContainerExit = "OnContainerExit"
)

// MinCooldownPeriod is the shortest cooldown sessiond accepts (Azure's is 300 s).
const MinCooldownPeriod = time.Second

var namePattern = regexp.MustCompile(`^[a-z][a-z0-9-]{1,61}[a-z0-9]$`)

// Validate checks s and returns it with LifecycleType defaulted to Timed. Errors are
// Invalid, public, and name the property (as ARM spells it) that is wrong.
func (s Spec) Validate() (Spec, error) {
	bad := func(format string, args ...any) (Spec, error) {
		return s, errkind.New(errkind.Invalid, "session pool %q: %s", s.Name, fmt.Sprintf(format, args...))
	}
	if s.LifecycleType == "" {
		s.LifecycleType = LifecycleTimed
	}
	switch {
	case !namePattern.MatchString(s.Name):
		return bad("name: want 3-63 characters of a-z, 0-9 and '-', starting with a letter and not ending with '-'")
	case s.ContainerType != "" && s.ContainerType != PythonLTS && s.ContainerType != Shell && s.ContainerType != CustomContainer:
		return bad("containerType %q: want %s, %s or %s", s.ContainerType, PythonLTS, Shell, CustomContainer)
	case s.MaxConcurrentSessions < 1:
		return bad("maxConcurrentSessions %d: want at least 1", s.MaxConcurrentSessions)
	case s.ReadySessionInstances < 0:
		return bad("readySessionInstances %d: want 0 or more", s.ReadySessionInstances)
	case s.LifecycleType != LifecycleTimed && s.LifecycleType != LifecycleOnContainerExit:
		return bad("lifecycleType %q: want %s or %s", s.LifecycleType, LifecycleTimed, LifecycleOnContainerExit)
	case s.LifecycleType == LifecycleTimed && s.CooldownPeriod < MinCooldownPeriod:
		return bad("cooldownPeriodInSeconds %v: want at least %v", s.CooldownPeriod, MinCooldownPeriod)
	case s.LifecycleType == LifecycleOnContainerExit && s.CooldownPeriod != 0:
		return bad("cooldownPeriodInSeconds is not allowed with lifecycleType %s", LifecycleOnContainerExit)
	case s.MaxAlivePeriod < 0:
		return bad("maxAlivePeriodInSeconds %v: want 0 (none) or more", s.MaxAlivePeriod)
	case s.ExecutionTimeoutCap < 0:
		return bad("executionTimeoutCap %v: want 0 (the default) or more", s.ExecutionTimeoutCap)
	case s.Limits.MemoryBytes < 0 || s.Limits.CPUMillis < 0 || s.Limits.Pids < 0 || s.Limits.DiskBytes < 0:
		return bad("limits %+v: no limit may be negative", s.Limits)
	case s.ContainerType == CustomContainer && s.Container == nil:
		return bad("customContainerTemplate: required for containerType %s", CustomContainer)
	case s.ContainerType != CustomContainer && s.Container != nil:
		return bad("customContainerTemplate: only %s pools have one", CustomContainer)
	}
	if s.Container != nil {
		if err := s.Container.validate(); err != nil {
			return s, fmt.Errorf("session pool %q: %w", s.Name, err)
		}
	}
	return s, nil
}
