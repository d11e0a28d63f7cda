package config

import (
	"encoding"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// decoder walks YAML nodes into Go values by their yaml tags, so that every
// error, and every later validation error, can name file, line and field.
type decoder struct {
	file string
	errs []error
	// root is the parsed document, where lineOf and written find a field
	// path's line. Recording every path's line while decoding cost a map
	// write and a string per field: a quarter of a cold parse of 16,000
	// backends (most of it the map's growth).
	root *yaml.Node
	// valueErrs counts errors of typed values (a bad MAC, an unknown
	// protocol): the field keeps its zero value, so defaults and
	// validation still run and every problem is reported at once.
	valueErrs int
	structs   map[reflect.Type]*structFields // by type, built on first use
}

// structFields is what decodeStruct needs of a struct type: 16,000
// backends are 16,000 structs of one type.
type structFields struct {
	index map[string]int // yaml key -> field index
	known string         // the keys, sorted, for the unknown-field error
}

func (d *decoder) fieldsOf(t reflect.Type) *structFields {
	if f, ok := d.structs[t]; ok {
		return f
	}
	f := &structFields{index: map[string]int{}}
	var known []string
	for i := range t.NumField() {
		tag, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		if tag == "" || tag == "-" {
			continue
		}
		f.index[tag] = i
		known = append(known, tag)
	}
	slices.Sort(known)
	f.known = strings.Join(known, ", ")
	if d.structs == nil {
		d.structs = map[reflect.Type]*structFields{}
	}
	d.structs[t] = f
	return f
}

func (d *decoder) errorf(line int, path, format string, args ...any) {
	d.errs = append(d.errs, fmt.Errorf("%s:%d: %s: %s", d.file, line, path, fmt.Sprintf(format, args...)))
}

// fail reports a validation problem at the line where path was written
// (or its nearest written parent).
func (d *decoder) fail(path, format string, args ...any) {
	d.errorf(d.lineOf(path), path, format, args...)
}

func (d *decoder) lineOf(path string) int {
	for p := path; p != ""; {
		if l, ok := d.line(p); ok {
			return l
		}
		i := max(strings.LastIndexAny(p, ".["), 0)
		p = p[:i]
	}
	return 1
}

// written reports whether the config gives path (a field, a list item).
func (d *decoder) written(path string) bool {
	_, ok := d.line(path)
	return ok
}

// line is where path (like services[2].backends[0].weight) is written: a
// field's key, or a list item (an alias's anchor). ok is false when the
// document does not hold path.
func (d *decoder) line(path string) (line int, ok bool) {
	n := d.root
	if n == nil {
		return 0, false
	}
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	for path != "" {
		if n.Kind == yaml.AliasNode && n.Alias != nil {
			n = n.Alias
		}
		if path[0] == '[' {
			end := strings.IndexByte(path, ']')
			if end < 0 {
				return 0, false
			}
			i, err := strconv.Atoi(path[1:end])
			if err != nil || n.Kind != yaml.SequenceNode || i < 0 || i >= len(n.Content) {
				return 0, false
			}
			n, line = n.Content[i], n.Content[i].Line
			if n.Kind == yaml.AliasNode && n.Alias != nil {
				line = n.Alias.Line
			}
			path = path[end+1:]
			continue
		}
		path = strings.TrimPrefix(path, ".")
		end := strings.IndexAny(path, ".[")
		if end < 0 {
			end = len(path)
		}
		if n.Kind != yaml.MappingNode {
			return 0, false
		}
		var val *yaml.Node
		// The first of a key given twice is the one decoded.
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == path[:end] {
				line, val = n.Content[i].Line, n.Content[i+1]
				break
			}
		}
		if val == nil {
			return 0, false
		}
		n, path = val, path[end:]
	}
	return line, true
}

func join(path, field string) string {
	if path == "" {
		return field
	}
	return path + "." + field
}

var (
	nodeType     = reflect.TypeFor[yaml.Node]()
	durationType = reflect.TypeFor[time.Duration]()
	addrType     = reflect.TypeFor[netip.Addr]()

	textUnmarshalerType = reflect.TypeFor[encoding.TextUnmarshaler]()
)

// decode stores n into v, which may already hold defaults: only the keys
// present in n change it.
func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	switch v.Type() {
	case nodeType:
		v.Set(reflect.ValueOf(*n))
		return
	case durationType:
		if !d.scalar(n, path) {
			return
		}
		dur, err := time.ParseDuration(n.Value)
		if err != nil || dur < 0 {
			d.errorf(n.Line, path, "%q is not a duration like 250ms or 2s", n.Value)
			return
		}
		v.SetInt(int64(dur))
		return
	case addrType:
		if !d.scalar(n, path) {
			return
		}
		a, err := netip.ParseAddr(n.Value)
		if err != nil {
			d.errorf(n.Line, path, "%q is not an IPv4 or IPv6 address", n.Value)
			return
		}
		v.Set(reflect.ValueOf(a))
		return
	}

	// Typed values (protocol, modes, MAC) check themselves.
	if v.CanAddr() && v.Addr().Type().Implements(textUnmarshalerType) {
		if !d.scalar(n, path) {
			return
		}
		if err := v.Addr().Interface().(encoding.TextUnmarshaler).UnmarshalText([]byte(n.Value)); err != nil {
			d.errorf(n.Line, path, "%v", err)
			d.valueErrs++
		}
		return
	}

	switch v.Kind() {
	case reflect.Struct:
		d.decodeStruct(n, v, path)
	case reflect.Pointer:
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		d.decode(n, v.Elem(), path)
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			d.errorf(n.Line, path, "want a list")
			return
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, item := range n.Content {
			d.decode(item, s.Index(i), path+"["+strconv.Itoa(i)+"]")
		}
		v.Set(s)
	case reflect.String:
		if d.scalar(n, path) {
			v.SetString(n.Value)
		}
	case reflect.Bool:
		if !d.scalar(n, path) {
			return
		}
		switch n.Value {
		case "true":
			v.SetBool(true)
		case "false":
			v.SetBool(false)
		default:
			d.errorf(n.Line, path, "%q is not true or false", n.Value)
		}
	case reflect.Int, reflect.Int64:
		if !d.scalar(n, path) {
			return
		}
		i, err := strconv.ParseInt(n.Value, 10, 64)
		if err != nil {
			d.errorf(n.Line, path, "%q is not a whole number", n.Value)
			return
		}
		v.SetInt(i)
	case reflect.Uint8, reflect.Uint16, reflect.Uint32:
		if !d.scalar(n, path) {
			return
		}
		bits := v.Type().Bits()
		u, err := strconv.ParseUint(n.Value, 10, bits)
		if err != nil {
			d.errorf(n.Line, path, "%q is not a whole number from 0 to %d", n.Value, uint64(1)<<bits-1)
			return
		}
		v.SetUint(u)
	case reflect.Float64:
		if !d.scalar(n, path) {
			return
		}
		f, err := strconv.ParseFloat(n.Value, 64)
		if err != nil {
			d.errorf(n.Line, path, "%q is not a number", n.Value)
			return
		}
		v.SetFloat(f)
	default:
		d.errorf(n.Line, path, "cannot hold a %s", v.Kind())
	}
}

func (d *decoder) scalar(n *yaml.Node, path string) bool {
	if n.Kind != yaml.ScalarNode {
		d.errorf(n.Line, path, "want a single value, not a list or mapping")
		return false
	}
	return true
}

func (d *decoder) decodeStruct(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
			return
		}
		d.errorf(n.Line, path, "want a mapping of fields")
		return
	}
	f := d.fieldsOf(v.Type())
	seen := make([]bool, v.NumField())
	for i := 0; i+1 < len(n.Content); i += 2 {
		key, val := n.Content[i], n.Content[i+1]
		fp := join(path, key.Value)
		idx, ok := f.index[key.Value]
		switch {
		case !ok:
			d.errorf(key.Line, fp, "unknown field (known: %s)", f.known)
			continue
		case seen[idx]:
			d.errorf(key.Line, fp, "given twice")
			continue
		}
		seen[idx] = true
		d.decode(val, v.Field(idx), fp)
	}
}
