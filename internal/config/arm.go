package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/sessiond/sessiond/internal/errkind"
	"github.com/sessiond/sessiond/internal/pool"
)

// This file is the management API's side of the configuration: one pool as a JSON
// document in the shape of an ARM Microsoft.App/sessionPools resource,
//
//	{"name": "analysis",                       // optional; must equal the path's name
//	 "properties": {...ARM properties...},     // as in a configuration file's pool entry
//	 "sessiond":   {...sessiond's own...}}
//
// read into a pool.Spec with the same rules and errors as the configuration file
// (PoolFromJSON), and the reverse (Document), which spells out every default so that a
// document read back gives the same Spec: what the management API GETs, PUTs back
// unchanged.

// FieldError is a validation error about one field, named by its path in the pool's
// declaration ("properties.scaleConfiguration.maxConcurrentSessions", "sessiond.image").
// Its kind is errkind.Invalid, and its text is public.
type FieldError struct {
	Path string
	Msg  string
}

func (e *FieldError) Error() string { return e.Path + ": " + e.Msg }

// Unwrap classifies the error for errkind.
func (e *FieldError) Unwrap() error {
	return &errkind.Error{Kind: errkind.Invalid, Msg: e.Error(), Public: true}
}

// FieldPath returns the path of the field the error is about (the API's error target).
func (e *FieldError) FieldPath() string { return e.Path }

// ignoredFields are ARM resource fields a document may carry and that sessiond ignores:
// the envelope of an ARM resource (so one pastes in) and the read-only fields of what the
// management API returns (so a GET body PUTs back). Keys are lower case.
var ignoredFields = map[string]bool{
	"id": true, "type": true, "location": true, "tags": true, "identity": true, "systemdata": true,
	"status": true,
}

// ignoredProperties are the read-only ARM properties, accepted and ignored likewise.
var ignoredProperties = map[string]bool{
	"poolmanagementendpoint": true, "provisioningstate": true, "nodecount": true, "templateupdatestatus": true,
}

// MaxDocumentBytes bounds a pool document.
const MaxDocumentBytes = 1 << 20

// PoolFromJSON reads the pool called name from an ARM-shaped JSON document (see above),
// validating it as the configuration file's pools are. Field names match case-insensitively,
// as ARM's do; unknown fields and values of the wrong type are refused. Errors are
// errkind.Invalid with a public message naming the field; errors.As finds the
// *FieldError.
func PoolFromJSON(name string, doc []byte) (pool.Spec, error) {
	d, err := DeclFromJSON(doc)
	if err != nil {
		return pool.Spec{}, err
	}
	if d.Name != "" && d.Name != name {
		return pool.Spec{}, invalid(&FieldError{"name", fmt.Sprintf("%q does not match the pool's name %q", d.Name, name)})
	}
	d.Name = name
	s, err := d.spec()
	if err != nil {
		return pool.Spec{}, invalid(err)
	}
	return s, nil
}

// DeclFromJSON reads a pool declaration from an ARM-shaped JSON document, checking its
// fields' names and types (not their values: PoolDecl.spec does).
func DeclFromJSON(doc []byte) (PoolDecl, error) {
	var d PoolDecl
	if len(doc) > MaxDocumentBytes {
		return d, errkind.New(errkind.LimitExceeded, "the pool document is %d bytes long, above the limit of %d", len(doc), MaxDocumentBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(doc))
	dec.UseNumber()
	var tree any
	if err := dec.Decode(&tree); err != nil {
		return d, errkind.New(errkind.Invalid, "the pool document is not valid JSON: %v", err)
	}
	if dec.More() {
		return d, errkind.New(errkind.Invalid, "the pool document has more than one JSON value")
	}
	obj, ok := tree.(map[string]any)
	if !ok {
		return d, errkind.New(errkind.Invalid, "the pool document must be a JSON object")
	}
	for k := range obj {
		if ignoredFields[strings.ToLower(k)] {
			delete(obj, k)
		}
	}
	if props, ok := obj["properties"].(map[string]any); ok {
		for k := range props {
			if ignoredProperties[strings.ToLower(k)] {
				delete(props, k)
			}
		}
	}
	canon, err := canonical(obj, reflect.TypeFor[PoolDecl](), "")
	if err != nil {
		return d, invalid(err)
	}
	// The canonical tree has the declaration's field names and types: the YAML decoder
	// (JSON is YAML) fills the declaration exactly as from a configuration file.
	b, err := json.Marshal(canon)
	if err != nil {
		return d, errkind.Wrap(errkind.Internal, fmt.Errorf("re-encoding the pool document: %w", err))
	}
	yd := yaml.NewDecoder(bytes.NewReader(b))
	yd.KnownFields(true)
	if err := yd.Decode(&d); err != nil {
		return d, errkind.New(errkind.Invalid, "reading the pool document: %s", strings.TrimPrefix(err.Error(), "yaml: "))
	}
	return d, nil
}

// invalid classifies a validation error: a *FieldError is Invalid already.
func invalid(err error) error {
	var fe *FieldError
	if errors.As(err, &fe) {
		return err
	}
	return errkind.New(errkind.Invalid, "%v", err)
}

// canonical checks a decoded JSON value against the Go type it declares (by the yaml
// field tags), naming fields case-insensitively, and returns it with the tags' spelling
// of every field name. Unknown fields, duplicate fields (differing in case) and scalar
// values of the wrong type are errors naming the field. null stands for an absent value.
func canonical(v any, t reflect.Type, path string) (any, error) {
	if v == nil {
		return nil, nil
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	where := func(format string, args ...any) error {
		p := path
		if p == "" {
			p = "(document)"
		}
		return &FieldError{p, fmt.Sprintf(format, args...)}
	}
	switch t.Kind() {
	case reflect.Struct:
		obj, ok := v.(map[string]any)
		if !ok {
			return nil, where("want a JSON object, got %s", jsonType(v))
		}
		fields := map[string]reflect.StructField{}
		for i := range t.NumField() {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if f.IsExported() && name != "" && name != "-" {
				fields[strings.ToLower(name)] = f
			}
		}
		out := map[string]any{}
		keys := make([]string, 0, len(obj))
		for k := range obj {
			keys = append(keys, k)
		}
		sort.Strings(keys) // deterministic errors
		for _, k := range keys {
			f, ok := fields[strings.ToLower(k)]
			if !ok {
				return nil, &FieldError{join(path, k), "unknown field"}
			}
			name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if _, dup := out[name]; dup {
				return nil, &FieldError{join(path, name), "given twice (field names ignore case)"}
			}
			c, err := canonical(obj[k], f.Type, join(path, name))
			if err != nil {
				return nil, err
			}
			out[name] = c
		}
		return out, nil
	case reflect.Slice:
		arr, ok := v.([]any)
		if !ok {
			return nil, where("want a JSON array, got %s", jsonType(v))
		}
		out := make([]any, len(arr))
		for i, e := range arr {
			c, err := canonical(e, t.Elem(), fmt.Sprintf("%s[%d]", path, i))
			if err != nil {
				return nil, err
			}
			out[i] = c
		}
		return out, nil
	case reflect.String:
		if _, ok := v.(string); !ok {
			return nil, where("want a string, got %s", jsonType(v))
		}
	case reflect.Bool:
		if _, ok := v.(bool); !ok {
			return nil, where("want true or false, got %s", jsonType(v))
		}
	case reflect.Int, reflect.Int64, reflect.Int32:
		n, ok := v.(json.Number)
		if !ok {
			return nil, where("want an integer, got %s", jsonType(v))
		}
		i, err := strconv.ParseInt(n.String(), 10, 64)
		if err != nil || (t.Kind() == reflect.Int32 && (i < math.MinInt32 || i > math.MaxInt32)) {
			return nil, where("want an integer, got %s", n)
		}
	case reflect.Float64, reflect.Float32:
		if _, ok := v.(json.Number); !ok {
			return nil, where("want a number, got %s", jsonType(v))
		}
	}
	// Maps and interfaces are free-form (properties sessiond accepts and ignores); other
	// kinds are left to the YAML decoder.
	return v, nil
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

func jsonType(v any) string {
	switch v.(type) {
	case map[string]any:
		return "an object"
	case []any:
		return "an array"
	case string:
		return "a string"
	case json.Number:
		return "a number"
	case bool:
		return "a boolean"
	}
	return fmt.Sprintf("%T", v)
}

// DeclOf returns the declaration of s with every default spelled out: reading it back
// (PoolDecl.spec, PoolFromJSON) gives s.
func DeclOf(s pool.Spec) PoolDecl {
	d := PoolDecl{Name: s.Name}
	p := &d.Properties
	ct := s.ContainerType
	if ct == "" {
		ct = pool.PythonLTS
	}
	p.ContainerType = string(ct)
	p.PoolManagementType = "Dynamic"
	p.ScaleConfiguration = &ScaleConfiguration{MaxConcurrentSessions: ptr(s.MaxConcurrentSessions), ReadySessionInstances: ptr(s.ReadySessionInstances)}
	lc := &LifecycleConfiguration{LifecycleType: s.LifecycleType}
	if lc.LifecycleType == "" {
		lc.LifecycleType = pool.LifecycleTimed
	}
	if lc.LifecycleType == pool.LifecycleTimed {
		lc.CooldownPeriodInSeconds = ptr(seconds(s.CooldownPeriod))
	}
	if s.MaxAlivePeriod > 0 {
		lc.MaxAlivePeriodInSeconds = ptr(seconds(s.MaxAlivePeriod))
	}
	p.DynamicPoolConfiguration = &DynamicPoolConfiguration{LifecycleConfiguration: lc}
	nc := &SessionNetworkConfiguration{Status: "EgressDisabled"}
	if s.Network.Egress {
		nc.Status = "EgressEnabled"
		for _, c := range s.Network.AllowCIDRs {
			nc.AllowedCIDRs = append(nc.AllowedCIDRs, c.String())
		}
		nc.AllowedDomains = s.Network.AllowDomains
	}
	p.SessionNetworkConfiguration = nc

	o := &d.Sessiond
	o.Runtime, o.Image = s.Runtime, s.Image
	o.CPU = float64(s.Limits.CPUMillis) / 1000
	o.Memory, o.Disk = formatQuantity(s.Limits.MemoryBytes), formatQuantity(s.Limits.DiskBytes)
	o.Pids = s.Limits.Pids
	if ct == pool.PythonLTS || s.WarmupCode != "" {
		o.WarmupCode = ptr(s.WarmupCode)
	}
	o.ExecutionTimeoutCapInSeconds = seconds(s.ExecutionTimeoutCap)
	return d
}

func ptr[T any](v T) *T { return &v }

// seconds rounds d up to whole seconds, so that a period never shrinks to 0.
func seconds(d time.Duration) int { return int((d + time.Second - 1) / time.Second) }

// formatQuantity spells n bytes as parseQuantity reads them: in the largest binary unit
// that divides it, "" for 0.
func formatQuantity(n int64) string {
	if n == 0 {
		return ""
	}
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"Ti", 1 << 40}, {"Gi", 1 << 30}, {"Mi", 1 << 20}, {"Ki", 1 << 10}} {
		if n%u.mult == 0 {
			return strconv.FormatInt(n/u.mult, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}

// Document returns s as the management API's pool document without its name:
// {"properties": {...}, "sessiond": {...}} with every default spelled out (DeclOf).
// PoolFromJSON reads it back to s.
func Document(s pool.Spec) json.RawMessage {
	d := DeclOf(s)
	doc := map[string]any{"properties": jsonValue(reflect.ValueOf(d.Properties)), "sessiond": jsonValue(reflect.ValueOf(d.Sessiond))}
	b, err := json.Marshal(doc)
	if err != nil {
		panic("encoding a pool document: " + err.Error()) // plain values only
	}
	return b
}

// jsonValue converts v to a JSON-encodable value, naming struct fields by their yaml
// tags and leaving out zero values (nil pointers, empty strings, zero numbers); a
// pointer to a zero value is kept.
func jsonValue(v reflect.Value) any {
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if v.IsNil() {
			return nil
		}
		return jsonValue(v.Elem())
	case reflect.Struct:
		out := map[string]any{}
		for i := range v.NumField() {
			f := v.Type().Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if !f.IsExported() || name == "" || name == "-" || v.Field(i).IsZero() {
				continue
			}
			out[name] = jsonValue(v.Field(i))
		}
		return out
	}
	return v.Interface()
}

// CheckUpdate refuses the changes a running pool cannot take: its name, containerType and
// runtime are fixed at creation. The error is errkind.Invalid and names the field.
func CheckUpdate(cur, next pool.Spec) error {
	ct := func(s pool.Spec) pool.ContainerType {
		if s.ContainerType == "" {
			return pool.PythonLTS
		}
		return s.ContainerType
	}
	bad := func(path string, from, to any) error {
		return invalid(&FieldError{path, fmt.Sprintf("cannot change (from %q to %q): delete the pool and create it again", from, to)})
	}
	switch {
	case next.Name != cur.Name:
		return bad("name", cur.Name, next.Name)
	case ct(next) != ct(cur):
		return bad("properties.containerType", ct(cur), ct(next))
	case next.Runtime != cur.Runtime:
		return bad("sessiond.runtime", cur.Runtime, next.Runtime)
	}
	return nil
}
