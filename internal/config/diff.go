package config

import (
	"encoding"
	"fmt"
	"io"
	"maps"
	"reflect"
	"slices"
	"strings"
	"text/tabwriter"

	"go.yaml.in/yaml/v3"
)

// Change is one difference between a running config and a candidate:
// what a reload of the candidate would change.
type Change struct {
	// Path names the field: services[web].backends[10.0.0.11].weight.
	// List items with a name (services, vrrp, interfaces) or an address
	// (backends, BGP peers) are keyed by it, so reordering a list is no
	// change.
	Path string `json:"path"`
	// Op is added, removed or changed.
	Op     string `json:"op"`
	Before string `json:"before,omitempty"`
	After  string `json:"after,omitempty"`
	// Effect says when a reload cannot apply the change: "restart"
	// (refused on reload; takes a restart) or "detach" (takes keepbitd
	// --detach and a start: forwarding stops meanwhile).
	Effect string `json:"effect,omitempty"`
}

// Diff lists what differs between the effective configs running and
// candidate (defaults applied, as Parse returns them), in path order.
func Diff(running, candidate *Config) []Change {
	var out []Change
	diffValue("", reflect.ValueOf(running).Elem(), reflect.ValueOf(candidate).Elem(), &out)
	for i := range out {
		out[i].Effect = effect(out[i].Path)
	}
	slices.SortStableFunc(out, func(a, b Change) int { return strings.Compare(a.Path, b.Path) })
	return out
}

// effect: the fields a reload refuses (control's start-only rules).
func effect(path string) string {
	switch {
	case path == "node.hash_seed", path == "node.state_dir", path == "node.flow_cache_size":
		return "restart"
	case path == "node.pin_root":
		return "detach"
	case strings.HasPrefix(path, "interfaces[") && strings.HasSuffix(path, "].mode"):
		return "detach"
	}
	return ""
}

var (
	yamlNode      = reflect.TypeFor[yaml.Node]()
	textMarshaler = reflect.TypeFor[encoding.TextMarshaler]()
	stringer      = reflect.TypeFor[fmt.Stringer]()
)

// scalar renders v when it is a value rather than a structure: basic
// kinds, and types that print themselves (addresses, durations).
func scalar(v reflect.Value) (string, bool) {
	t := v.Type()
	if t.Implements(textMarshaler) {
		b, err := v.Interface().(encoding.TextMarshaler).MarshalText()
		if err == nil {
			return string(b), true
		}
	}
	if t.Implements(stringer) {
		return v.Interface().(fmt.Stringer).String(), true
	}
	switch t.Kind() {
	case reflect.Struct, reflect.Slice, reflect.Array, reflect.Map, reflect.Pointer, reflect.Interface:
		if t.Kind() == reflect.Slice || t.Kind() == reflect.Array {
			if s, ok := scalarList(v); ok {
				return s, true
			}
		}
		return "", false
	}
	return fmt.Sprint(v.Interface()), true
}

// scalarList renders a list of values ([10.0.0.1 10.0.0.2]).
func scalarList(v reflect.Value) (string, bool) {
	parts := make([]string, 0, v.Len())
	for i := 0; i < v.Len(); i++ {
		s, ok := scalar(v.Index(i))
		if !ok {
			return "", false
		}
		parts = append(parts, s)
	}
	return "[" + strings.Join(parts, " ") + "]", true
}

func fieldPath(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

func diffValue(path string, a, b reflect.Value, out *[]Change) {
	if a.Kind() == reflect.Pointer {
		switch {
		case a.IsNil() && b.IsNil():
		case a.IsNil():
			*out = append(*out, Change{Path: path, Op: "added", After: summary(b.Elem())})
		case b.IsNil():
			*out = append(*out, Change{Path: path, Op: "removed", Before: summary(a.Elem())})
		default:
			diffValue(path, a.Elem(), b.Elem(), out)
		}
		return
	}
	if sa, ok := scalar(a); ok {
		if sb, _ := scalar(b); sa != sb {
			*out = append(*out, Change{Path: path, Op: "changed", Before: sa, After: sb})
		}
		return
	}
	switch a.Kind() {
	case reflect.Struct:
		t := a.Type()
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			name, ok := fieldName(f)
			if !ok {
				continue
			}
			diffValue(fieldPath(path, name), a.Field(i), b.Field(i), out)
		}
	case reflect.Slice, reflect.Array:
		diffList(path, a, b, out)
	case reflect.Map:
		keys := map[string]bool{}
		for _, k := range a.MapKeys() {
			keys[fmt.Sprint(k.Interface())] = true
		}
		for _, k := range b.MapKeys() {
			keys[fmt.Sprint(k.Interface())] = true
		}
		for _, k := range slices.Sorted(maps.Keys(keys)) {
			va, vb := mapIndex(a, k), mapIndex(b, k)
			p := fmt.Sprintf("%s[%s]", path, k)
			switch {
			case !va.IsValid() && !vb.IsValid():
			case !va.IsValid():
				*out = append(*out, Change{Path: p, Op: "added", After: summary(vb)})
			case !vb.IsValid():
				*out = append(*out, Change{Path: p, Op: "removed", Before: summary(va)})
			default:
				diffValue(p, va, vb, out)
			}
		}
	}
}

func mapIndex(m reflect.Value, key string) reflect.Value {
	for _, k := range m.MapKeys() {
		if fmt.Sprint(k.Interface()) == key {
			return m.MapIndex(k)
		}
	}
	return reflect.Value{}
}

// fieldName is a field's name in keepbit.yaml. The effective check
// (yaml:"-", filled from the defaults) counts as "check"; the raw YAML
// it came from does not count at all.
func fieldName(f reflect.StructField) (string, bool) {
	if !f.IsExported() || f.Type == yamlNode || f.Type == reflect.PointerTo(yamlNode) {
		return "", false
	}
	tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	switch tag {
	case "-":
		return strings.ToLower(f.Name), true
	case "":
		return strings.ToLower(f.Name), true
	}
	return tag, true
}

// itemKey is what identifies a list item across configs: its name or
// its address, when it has one.
func itemKey(v reflect.Value) (string, bool) {
	for v.Kind() == reflect.Pointer {
		if v.IsNil() {
			return "", false
		}
		v = v.Elem()
	}
	if v.Kind() != reflect.Struct {
		return "", false
	}
	for _, field := range []string{"name", "address"} {
		for i := 0; i < v.NumField(); i++ {
			if n, ok := fieldName(v.Type().Field(i)); ok && n == field {
				if s, ok := scalar(v.Field(i)); ok && s != "" {
					return s, true
				}
			}
		}
	}
	return "", false
}

func diffList(path string, a, b reflect.Value, out *[]Change) {
	keyed := func(v reflect.Value) ([]string, map[string]reflect.Value, bool) {
		var order []string
		m := map[string]reflect.Value{}
		for i := 0; i < v.Len(); i++ {
			k, ok := itemKey(v.Index(i))
			if !ok || m[k].IsValid() {
				return nil, nil, false
			}
			order = append(order, k)
			m[k] = v.Index(i)
		}
		return order, m, true
	}
	ka, ma, oka := keyed(a)
	kb, mb, okb := keyed(b)
	if !oka || !okb {
		// No key (or a duplicate one): items by position.
		n := max(a.Len(), b.Len())
		for i := 0; i < n; i++ {
			p := fmt.Sprintf("%s[%d]", path, i)
			switch {
			case i >= a.Len():
				*out = append(*out, Change{Path: p, Op: "added", After: summary(b.Index(i))})
			case i >= b.Len():
				*out = append(*out, Change{Path: p, Op: "removed", Before: summary(a.Index(i))})
			default:
				diffValue(p, a.Index(i), b.Index(i), out)
			}
		}
		return
	}
	for _, k := range ka {
		p := fmt.Sprintf("%s[%s]", path, k)
		if vb, ok := mb[k]; ok {
			diffValue(p, ma[k], vb, out)
		} else {
			*out = append(*out, Change{Path: p, Op: "removed", Before: summary(ma[k])})
		}
	}
	for _, k := range kb {
		if _, ok := ma[k]; !ok {
			*out = append(*out, Change{Path: fmt.Sprintf("%s[%s]", path, k), Op: "added", After: summary(mb[k])})
		}
	}
}

// summary is a one-line description of an added or removed item: its
// set scalar fields (the first few).
func summary(v reflect.Value) string {
	for v.Kind() == reflect.Pointer {
		if v.IsNil() {
			return ""
		}
		v = v.Elem()
	}
	if s, ok := scalar(v); ok {
		return s
	}
	if v.Kind() != reflect.Struct {
		return fmt.Sprintf("%d items", v.Len())
	}
	var parts []string
	for i := 0; i < v.NumField() && len(parts) < 6; i++ {
		name, ok := fieldName(v.Type().Field(i))
		if !ok {
			continue
		}
		f := v.Field(i)
		if f.IsZero() {
			continue
		}
		if s, ok := scalar(f); ok {
			parts = append(parts, name+"="+s)
		} else if f.Kind() == reflect.Slice {
			parts = append(parts, fmt.Sprintf("%s=%d", name, f.Len()))
		}
	}
	return strings.Join(parts, " ")
}

// WriteChanges prints changes one per line for people (keepbitctl diff,
// keepbitd --check-config --against-running).
func WriteChanges(w io.Writer, changes []Change) error {
	if len(changes) == 0 {
		_, err := fmt.Fprintln(w, "no changes")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, c := range changes {
		var what string
		switch c.Op {
		case "added":
			what = c.After
		case "removed":
			what = c.Before
		default:
			what = c.Before + " -> " + c.After
		}
		switch c.Effect {
		case "restart":
			what += "  (a reload refuses this: restart keepbitd)"
		case "detach":
			what += "  (a reload refuses this: keepbitd --detach and a start; forwarding stops meanwhile)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", c.Op, c.Path, what)
	}
	return tw.Flush()
}
