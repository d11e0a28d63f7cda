package metrics

import (
	"testing"

	dto "github.com/prometheus/client_model/go"

	"github.com/keepbit/keepbit/internal/version"
)

// TestBuildInfo: one keepbit_build_info series, value 1, labelled with
// this binary's version.
func TestBuildInfo(t *testing.T) {
	mfs, err := New(world(1, []string{"eth0"}, nil), nil).reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var got []*dto.Metric
	for _, mf := range mfs {
		if mf.GetName() == "keepbit_build_info" {
			got = mf.GetMetric()
		}
	}
	if len(got) != 1 {
		t.Fatalf("keepbit_build_info: %d series, want 1", len(got))
	}
	if v := got[0].GetGauge().GetValue(); v != 1 {
		t.Fatalf("keepbit_build_info = %v, want 1", v)
	}
	want := version.Get()
	for name, v := range map[string]string{"version": want.Version, "revision": want.Revision, "goversion": want.GoVersion} {
		if l := labelled(got, name, v); len(l) != 1 {
			t.Errorf("keepbit_build_info has no %s=%q label: %v", name, v, got[0].GetLabel())
		}
	}
}
