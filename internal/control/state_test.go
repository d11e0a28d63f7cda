package control

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLoadOverrides: what a state file may hold. A file that cannot be
// trusted stops the start (naming the file) instead of being ignored,
// which could put a backend under maintenance back in rotation.
func TestLoadOverrides(t *testing.T) {
	cases := []struct {
		name    string
		content string // "" = no file
		want    string
		wantErr string
	}{
		{"no file yet", "", "map[]", ""},
		{"both kinds, mapped address unmapped", `{"overrides": [{"service": "web", "backend": "10.0.0.1", "admin": "disabled"}, {"service": "web", "backend": "::ffff:10.0.0.2", "admin": "draining"}]}`,
			"map[web:map[10.0.0.1:disabled 10.0.0.2:draining]]", ""},
		{"torn or foreign file", `{"overrides": [`, "", "overrides.json: unexpected end of JSON input (fix or remove the file"},
		{"unknown admin", `{"overrides": [{"service": "web", "backend": "10.0.0.1", "admin": "off"}]}`, "", "overrides[0]: want a service, a backend and admin disabled or draining"},
		{"no backend", `{"overrides": [{"service": "web", "admin": "disabled"}]}`, "", "overrides[0]: want a service, a backend"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			if c.content != "" {
				if err := os.WriteFile(filepath.Join(dir, overridesFile), []byte(c.content), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			got, err := loadOverrides(dir)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s := fmt.Sprint(got); s != c.want {
				t.Fatalf("loaded %s, want %s", s, c.want)
			}
		})
	}
}
