package loader

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
)

// Every map of the collection is pinned as pinDir/<name>, its name in the
// ELF. The list comes from the collection itself, not from a list kept
// here: a map added to bpf/maps.h is pinned, adopted and (when an older
// pin directory lacks it) created with no change to the loader.

// scratchMap: a map that holds nothing across a program run (the
// compatible build's packet hand-over): not pinned, not adopted, and
// absent from the current build, so not among d.objs either; the program
// holds it.
func scratchMap(name string) bool { return name == "packet_scratch" }

// pinnedMapNames returns the maps of spec that are pinned, sorted. Maps
// whose names start with a dot (.rodata and friends) hold the program's
// constants: they belong to one program load and are not shared.
func pinnedMapNames(spec *ebpf.CollectionSpec) []string {
	var names []string
	for name := range spec.Maps {
		if !strings.HasPrefix(name, ".") && !scratchMap(name) {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

// loadCollection loads spec into d.objs and returns the loaded maps that
// are pinned, by name (owned by d.objs).
func (d *Dataplane) loadCollection(spec *ebpf.CollectionSpec, opts *ebpf.CollectionOptions) (map[string]*ebpf.Map, error) {
	if opts == nil {
		// A fresh dataplane: its maps are created side by side first.
		created, err := createMaps(spec)
		if err != nil {
			return nil, err
		}
		defer func() {
			for _, m := range created {
				m.Close() // the collection holds clones
			}
		}()
		opts = &ebpf.CollectionOptions{MapReplacements: created}
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, *opts)
	if err != nil {
		return nil, err
	}
	maps := map[string]*ebpf.Map{}
	for _, name := range pinnedMapNames(spec) {
		m := coll.Maps[name]
		if m == nil {
			coll.Close()
			return nil, fmt.Errorf("map %s: not in the loaded collection", name)
		}
		maps[name] = m
	}
	// Assign moves what d.objs names out of the collection; Close then
	// releases only the rest (.rodata, which the program holds itself).
	err = coll.Assign(&d.objs)
	coll.Close()
	if err != nil {
		return nil, fmt.Errorf("assign BPF objects: %w", err)
	}
	info, err := d.objs.KeepbitXdp.Info()
	if err != nil {
		d.objs.Close()
		return nil, fmt.Errorf("read program info: %w", err)
	}
	d.progID, _ = info.ID()
	d.maps = maps
	return maps, nil
}

// createMaps creates spec's pinned maps concurrently. The collection
// would create them one after the other, and the kernel takes 200 ms for
// them here (allocating 65,536 per-CPU counters, preallocating two
// 262,144-entry LRU tables): most of a start's time before the first
// service is applied.
func createMaps(spec *ebpf.CollectionSpec) (map[string]*ebpf.Map, error) {
	names := pinnedMapNames(spec)
	maps := make([]*ebpf.Map, len(names))
	errs := make([]error, len(names))
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Go(func() {
			if maps[i], errs[i] = ebpf.NewMap(spec.Maps[name]); errs[i] != nil {
				errs[i] = fmt.Errorf("create map %s: %w", name, errs[i])
			}
		})
	}
	wg.Wait()
	created := make(map[string]*ebpf.Map, len(names))
	for i, m := range maps {
		if m != nil {
			created[names[i]] = m
		}
	}
	if err := errors.Join(errs...); err != nil {
		for _, m := range created {
			m.Close()
		}
		return nil, err
	}
	return created, nil
}

// pinnedState is what an adoption found in the pin directory.
type pinnedState struct {
	// reuse are pinned maps that fit this version, passed to the load as
	// replacements (the load takes its own references).
	reuse map[string]*ebpf.Map
	// missing are maps this version has and the directory has not (the
	// pins were written by an earlier version): created by the load and
	// pinned after it.
	missing []string
	// migrated are pinned maps in an earlier layout whose entries were
	// copied into a new map of this layout (see migrations).
	migrated []*migratedMap
}

func (p *pinnedState) close() {
	for _, m := range p.reuse {
		m.Close()
	}
	for _, mm := range p.migrated {
		mm.old.Close()
		mm.cur.Close()
	}
}

// migratedMap is a pinned map in an earlier layout and its replacement.
type migratedMap struct {
	name string
	old  *ebpf.Map // still pinned, still used by the program being replaced
	cur  *ebpf.Map // this version's layout, filled from old
	mig  migration
}

// migration copies the entries of a pinned map of an earlier layout into
// a map of this version's layout. copyInto is called twice: before the new
// program is loaded, and after it replaced the old one under the link, to
// pick up what the old program wrote meanwhile (entries already in cur
// stay as they are); with afterSwitch, only after.
type migration struct {
	// from says whether old is the earlier layout this migration knows.
	from     func(old *ebpf.Map) bool
	newMap   func(spec *ebpf.MapSpec, old *ebpf.Map) (*ebpf.Map, error)
	copyInto func(old, cur *ebpf.Map) error
	// afterSwitch: copyInto runs once, after the switch, and adds old's
	// counts to what the new program counted meanwhile (counters: copied
	// twice, the counts made before the first copy would be added twice).
	afterSwitch bool
}

// migrations, by map name. A pinned map that does not fit this version
// and has no migration is refused (detach to start afresh).
var migrations = map[string]migration{}

// openPinned opens the pinned maps of spec under dir for an adoption.
func openPinned(spec *ebpf.CollectionSpec, dir string) (*pinnedState, error) {
	st := &pinnedState{reuse: map[string]*ebpf.Map{}}
	for _, name := range pinnedMapNames(spec) {
		path := filepath.Join(dir, name)
		m, err := ebpf.LoadPinnedMap(path, nil)
		if errors.Is(err, os.ErrNotExist) {
			st.missing = append(st.missing, name)
			continue
		}
		if err != nil {
			st.close()
			return nil, fmt.Errorf("adopt pinned map %s (detach to start afresh): %w", name, err)
		}
		cerr := spec.Maps[name].Compatible(m)
		if cerr == nil {
			st.reuse[name] = m
			continue
		}
		mig, ok := migrations[name]
		if !ok || !mig.from(m) {
			m.Close()
			st.close()
			return nil, fmt.Errorf("pinned map %s does not fit this version (detach to start afresh): %w", name, cerr)
		}
		cur, err := mig.newMap(spec.Maps[name], m)
		if err != nil {
			m.Close()
			st.close()
			return nil, fmt.Errorf("migrate pinned map %s: %w", name, err)
		}
		mm := &migratedMap{name: name, old: m, cur: cur, mig: mig}
		st.migrated = append(st.migrated, mm)
		if mig.afterSwitch {
			continue
		}
		if err := mig.copyInto(m, cur); err != nil {
			st.close()
			return nil, fmt.Errorf("migrate pinned map %s: %w", name, err)
		}
	}
	return st, nil
}

// replacements is what the load of the new program uses in place of
// creating maps.
func (p *pinnedState) replacements() map[string]*ebpf.Map {
	repl := make(map[string]*ebpf.Map, len(p.reuse)+len(p.migrated))
	for name, m := range p.reuse {
		repl[name] = m
	}
	for _, mm := range p.migrated {
		repl[mm.name] = mm.cur
	}
	return repl
}

// finish runs once the new program forwards: it catches migrated maps up
// with what the old program wrote until the switch, replaces their pins,
// and pins the maps this version added.
func (p *pinnedState) finish(dir string, loaded map[string]*ebpf.Map) error {
	for _, mm := range p.migrated {
		if err := mm.mig.copyInto(mm.old, mm.cur); err != nil {
			return fmt.Errorf("migrate pinned map %s: catch up: %w", mm.name, err)
		}
		// Pin beside the old pin, then rename over it: the path names the
		// old map or the new one at every moment, never nothing.
		// (bpffs refuses names with a dot.)
		tmp := filepath.Join(dir, mm.name+"_migrated")
		_ = os.Remove(tmp)
		if err := mm.cur.Pin(tmp); err != nil {
			return fmt.Errorf("pin migrated map %s: %w", mm.name, err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, mm.name)); err != nil {
			_ = os.Remove(tmp)
			return fmt.Errorf("replace pin of migrated map %s: %w", mm.name, err)
		}
	}
	for _, name := range p.missing {
		m := loaded[name]
		if m == nil {
			return fmt.Errorf("pin new map %s: not loaded", name)
		}
		if err := m.Pin(filepath.Join(dir, name)); err != nil {
			return fmt.Errorf("pin new map %s: %w", name, err)
		}
	}
	return nil
}
