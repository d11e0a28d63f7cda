package control

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestReloadRetriesFailedChecks: a backend whose check the scheduler
// refuses (an unreadable CA file) does not keep the service's other
// backends from getting theirs, the reload says which backend failed, and
// the next reload of the same config adds the check once it can, instead
// of skipping the service as unchanged.
func TestReloadRetriesFailedChecks(t *testing.T) {
	l := newCtlLab(t)
	ca := filepath.Join(l.dir, "ca.pem")
	services := func(interval string) string {
		var b strings.Builder
		b.WriteString("  - name: web\n    vip: 10.99.0.1\n    port: 80\n    check: {interval: " + interval + "}\n    backends:\n")
		for i := range 4 {
			check := ""
			if i == 1 {
				check = fmt.Sprintf(", check: {type: https, ca_file: %q}", ca)
			}
			fmt.Fprintf(&b, "      - {address: 10.0.0.%d, mac: \"02:00:00:00:00:%02x\"%s}\n", i+1, i+1, check)
		}
		return b.String()
	}
	if err := os.WriteFile(ca, pemCert(t), 0o600); err != nil {
		t.Fatal(err)
	}
	c := l.start(l.config(services("1s")))
	if err := os.WriteFile(ca, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	next := l.config(services("2s"))
	err := c.Reload(t.Context(), next)
	if err == nil || !strings.Contains(err.Error(), "backend 10.0.0.2") || !strings.Contains(err.Error(), "ca_file") {
		t.Fatalf("reload with an unreadable CA file: %v, want an error naming backend 10.0.0.2 and ca_file", err)
	}
	interval := func(i int) time.Duration {
		c.mu.Lock()
		defer c.mu.Unlock()
		sp, _ := c.svcs["web"].backends[addrN(i)].checkSpec()
		return sp.Interval
	}
	for i, want := range []time.Duration{2 * time.Second, time.Second, 2 * time.Second, 2 * time.Second} {
		if got := interval(i); got != want {
			t.Errorf("after the failed reload, backend %s's check interval is %v, want %v", addrN(i), got, want)
		}
	}
	if err := os.WriteFile(ca, pemCert(t), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := c.Reload(t.Context(), l.config(services("2s"))); err != nil {
		t.Fatalf("same config, CA file readable again: %v", err)
	}
	if got := interval(1); got != 2*time.Second {
		t.Errorf("after the retry, backend %s's check interval is %v, want 2s", addrN(1), got)
	}
}

func pemCert(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
