package loader

import (
	"testing"
)

// TestLimitsMatchBPF: every constant the loader mirrors from bpf/maps.h
// has the value the C side has. The C side reaches Go through bpf2go (the
// enums of maps.h, kept in BTF by keepbit_abi), so a change to one side
// alone fails here instead of corrupting a map layout at run time.
func TestLimitsMatchBPF(t *testing.T) {
	for _, c := range []struct {
		name   string
		goSide uint64
		cSide  uint64
	}{
		{"MAX_SERVICES", maxServices, uint64(keepbitLimitsMAX_SERVICES)},
		{"MAX_BACKENDS", maxBackends, uint64(keepbitLimitsMAX_BACKENDS)},
		{"MAX_GROUPS", MaxGroups, uint64(keepbitLimitsMAX_GROUPS)},
		{"MAX_MEMBERS", MaxMembers, uint64(keepbitLimitsMAX_MEMBERS)},
		{"VIP_FILTER_WORDS", vipFilterWords, uint64(keepbitLimitsVIP_FILTER_WORDS)},
		{"TBL_SIZE", tblSize, uint64(keepbitTableLayoutTBL_SIZE)},
		{"TBL_MEMBERS", tblMembers, uint64(keepbitTableLayoutTBL_MEMBERS)},
		{"TBL_GROUPS", tblGroups, uint64(keepbitTableLayoutTBL_GROUPS)},
		{"TBL_GENERATION", tblGen, uint64(keepbitTableLayoutTBL_GENERATION)},
		{"TBL_GROUP_END", tblGroupEnd, uint64(keepbitTableLayoutTBL_GROUP_END)},
		{"TBL_HDR", tblHdr, uint64(keepbitTableLayoutTBL_HDR)},
		{"TBL_CHUNK", tblChunk, uint64(keepbitTableLayoutTBL_CHUNK)},
		// The group ends must fit between the header words and the slots.
		{"TBL_GROUP_END+MAX_GROUPS <= TBL_HDR", 1, b2u(tblGroupEnd+MaxGroups <= keepbitTableLayoutTBL_HDR)},
		{"STATE_MASK", stateMask, uint64(keepbitStateWordSTATE_MASK)},
		{"STATE_INFO_SLOT", stateInfoSlot, uint64(keepbitStateWordSTATE_INFO_SLOT)},
		{"STATE_INC_SHIFT", stateIncShift, uint64(keepbitStateWordSTATE_INC_SHIFT)},
		{"STATE_SEQ_SHIFT", stateSeqShift, uint64(keepbitStateWordSTATE_SEQ_SHIFT)},
		// The incarnation fills the low word above the shift.
		{"incarnation mask", incMask, uint64(1)<<(32-keepbitStateWordSTATE_INC_SHIFT) - 1},
		// The loader never writes the bit that marks an invalid cache entry.
		{"STATE_INVALID outside the loader's bits", 0, uint64(keepbitStateWordSTATE_INVALID) & (stateMask | stateInfoSlot | incMask<<stateIncShift)},
		{"BACKEND_DOWN", uint64(Down), uint64(keepbitBackendStateValueBACKEND_DOWN)},
		{"BACKEND_UP", uint64(Up), uint64(keepbitBackendStateValueBACKEND_UP)},
		{"BACKEND_DRAINING", uint64(Draining), uint64(keepbitBackendStateValueBACKEND_DRAINING)},
		{"SERVICE_F_PASS_NO_BACKEND", serviceFlagPassNoBackend, uint64(keepbitServiceFlagsSERVICE_F_PASS_NO_BACKEND)},
		{"VIP_F_PORTS", vipFlagPorts, uint64(keepbitVipFlagsVIP_F_PORTS)},
		{"VIP_F_CATCHALL", vipFlagCatchall, uint64(keepbitVipFlagsVIP_F_CATCHALL)},
		{"BACKEND_F_IPV6", backendFlagIPv6, uint64(keepbitBackendFlagsBACKEND_F_IPV6)},
		{"reason names", uint64(len(reasonNames)), uint64(keepbitReasonREASON_MAX)},
	} {
		if c.goSide != c.cSide {
			t.Errorf("%s: loader has %d, bpf/maps.h has %d", c.name, c.goSide, c.cSide)
		}
	}
}

func b2u(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

// TestMapSizesMatchLimits: the maps are sized by the limits the loader
// allocates IDs from (a loader that hands out ID 4096 to a map of 4096
// entries would fail at the first write, not at load).
func TestMapSizesMatchLimits(t *testing.T) {
	spec, err := loadKeepbit()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		want uint32
	}{
		{keepbitMapServices, maxServices},
		{keepbitMapVips, maxServices},
		{keepbitMapServiceActive, maxServices},
		{keepbitMapServiceStats, maxServices},
		{keepbitMapTables, 2*maxServices + 1}, // see wordTables
		{keepbitMapBackendState, maxBackends},
		{keepbitMapBackendStats, maxBackends},
		{keepbitMapBackends, 2 * maxBackends},
		{keepbitMapVipFilter, vipFilterWords},
		{keepbitMapReasonStats, uint32(keepbitReasonREASON_MAX)},
	} {
		if got := spec.Maps[c.name].MaxEntries; got != c.want {
			t.Errorf("map %s: %d entries, the loader assumes %d", c.name, got, c.want)
		}
	}
}

// TestTableBufferTemplate: a migration builds table buffers from
// tableBufferSpec, not from the collection's template; the kernel
// installs only those that match the template.
func TestTableBufferTemplate(t *testing.T) {
	spec, err := loadKeepbit()
	if err != nil {
		t.Fatal(err)
	}
	tmpl := spec.Maps[keepbitMapTables].InnerMap
	want := tableBufferSpec(tmpl.MaxEntries)
	if tmpl.Type != want.Type || tmpl.KeySize != want.KeySize || tmpl.ValueSize != want.ValueSize || tmpl.Flags != want.Flags {
		t.Errorf("template %s key %d value %d flags %#x; tableBufferSpec %s key %d value %d flags %#x",
			tmpl.Type, tmpl.KeySize, tmpl.ValueSize, tmpl.Flags, want.Type, want.KeySize, want.ValueSize, want.Flags)
	}
}
