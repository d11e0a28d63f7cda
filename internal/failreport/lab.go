// Package failreport runs the failover report's scenarios in a network
// namespace lab with real keepbitd processes: a client, two Keepbit nodes
// sharing the VIP by VRRP, and backends that are processes of their own
// (so they can be killed or frozen). It measures each run from the
// client's side (internal/connload) and from the nodes' flight recorders,
// and writes the report (report.go). internal/failover holds the
// root-free arithmetic.
package failreport

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/keepbit/keepbit/internal/apiclient"
	"github.com/keepbit/keepbit/internal/lab"
	"github.com/keepbit/keepbit/internal/recorder"
)

// The lab's addresses: one segment for the client, the nodes and the
// VIP, one for the backends (the nodes have an address on both).
const (
	VIP      = "10.77.0.100"
	Port     = 9000
	ifname   = "kb-lb0"
	hashSeed = 20261122
)

// Options are the lab's timers: the targets assume 10 ms checks
// (fall 2, fast interval 5 ms) and 10 ms VRRP adverts.
type Options struct {
	Keepbitd string // keepbitd binary
	Self     string // this binary, run with ServeFlag as each backend
	Backends int    // default 3
	// CheckInterval, CheckTimeout, Fall, Rise, FastInterval: the
	// backends' HTTP check (default 10ms, 10ms, 2, 2, 5ms).
	CheckInterval, CheckTimeout, FastInterval time.Duration
	Fall, Rise                                int
	Advert                                    time.Duration // VRRP advert interval (default 10ms)
}

func (o *Options) defaults() {
	if o.Backends == 0 {
		o.Backends = 3
	}
	if o.CheckInterval == 0 {
		o.CheckInterval = 10 * time.Millisecond
	}
	if o.CheckTimeout == 0 {
		o.CheckTimeout = 10 * time.Millisecond
	}
	if o.FastInterval == 0 {
		o.FastInterval = 5 * time.Millisecond
	}
	if o.Fall == 0 {
		o.Fall = 2
	}
	if o.Rise == 0 {
		o.Rise = 2
	}
	if o.Advert == 0 {
		o.Advert = 10 * time.Millisecond
	}
}

// Lab is the running lab.
type Lab struct {
	opts     Options
	dir      string
	l        *lab.Lab
	Client   *lab.Host
	Backends []*Backend
	Nodes    []*Node
	undo     func() error // of a partition in force
	// The service's when_all_down ("" drop) and whether its last
	// backend is a backup group (group 1) of its own: scenarios change
	// them through Reconfigure.
	policy      string
	backupGroup bool
}

// Node is one Keepbit node: a namespace and its keepbitd.
type Node struct {
	Name string
	Host *lab.Host
	dir  string
	cfg  string
	sock string
	cmd  *exec.Cmd
	done chan struct{}
}

// Build creates the lab and waits until one node is VRRP master and
// every backend is up. Close removes it.
func Build(ctx context.Context, opts Options) (_ *Lab, err error) {
	opts.defaults()
	if os.Geteuid() != 0 {
		return nil, errors.New("must run as root: the lab creates network namespaces and attaches XDP programs")
	}
	dir, err := os.MkdirTemp("", "keepbit-failreport")
	if err != nil {
		return nil, err
	}
	L := &Lab{opts: opts, dir: dir}
	defer func() {
		if err != nil {
			L.Close()
		}
	}()
	if L.l, err = lab.New(); err != nil {
		return nil, err
	}
	if L.Client, err = L.l.Host("client", "eth0", "10.77.0.2/24"); err != nil {
		return nil, err
	}
	if err := L.Client.Do(func() error { return lab.TxChecksumOff("eth0") }); err != nil {
		return nil, err
	}
	// A thousand new connections a second leave that many ports in
	// TIME_WAIT each second: the client would run out of ports within
	// half a minute without the whole range and reuse after a second.
	if err := L.Client.Sysctl(map[string]string{"net/ipv4/ip_local_port_range": "1024 65535", "net/ipv4/tcp_tw_reuse": "1"}); err != nil {
		return nil, err
	}
	for i := range opts.Backends {
		b, err := L.addBackend(fmt.Sprintf("web%d", i+1), fmt.Sprintf("10.77.1.%d", 11+i))
		if err != nil {
			return nil, err
		}
		L.Backends = append(L.Backends, b)
	}
	for i, name := range []string{"lb1", "lb2"} {
		h, err := L.l.Host(name, ifname, fmt.Sprintf("10.77.0.%d/24", 11+i), fmt.Sprintf("10.77.1.%d/24", 1+i))
		if err != nil {
			return nil, err
		}
		n := &Node{Name: name, Host: h, dir: filepath.Join(dir, name)}
		n.sock = filepath.Join(n.dir, "keepbit.sock")
		n.cfg = filepath.Join(n.dir, "keepbit.yaml")
		if err := os.MkdirAll(n.dir, 0o700); err != nil {
			return nil, err
		}
		if err := os.WriteFile(n.cfg, []byte(L.config(name)), 0o600); err != nil {
			return nil, err
		}
		if err := L.StartNode(n); err != nil {
			return nil, err
		}
		L.Nodes = append(L.Nodes, n)
	}
	return L, L.Settle(ctx, 20*time.Second)
}

// config is a node's keepbit.yaml: the backends' HTTP check and VRRP at
// the lab's timers.
func (L *Lab) config(node string) string {
	o := L.opts
	var bs strings.Builder
	for i, b := range L.Backends {
		group := 0
		if L.backupGroup && i == len(L.Backends)-1 {
			group = 1
		}
		fmt.Fprintf(&bs, "      - {address: %s, group: %d}\n", b.Addr, group)
	}
	policy := L.policy
	if policy == "" {
		policy = "drop"
	}
	return fmt.Sprintf(`node: {name: %s, hash_seed: %d}
interfaces: [{name: %s}]
log: {format: json, level: info}
metrics: {listen: "off"}
defaults:
  check: {type: http, port: 80, path: /healthz, expect_status: [200], interval: %v, fast_interval: %v, timeout: %v, rise: %d, fall: %d, jitter: 0.1}
services:
  - name: web
    vip: %s
    port: %d
    protocol: tcp
    when_all_down: %s
    backends:
%svrrp:
  - name: vip
    vrid: 77
    priority: 100
    advert_interval: %v
    vips: [%s]
    announce: {count: 3, spacing: 10ms}
    track:
      dataplane: {weight: 0}
      services: [{name: web, weight: 50}]
`, node, hashSeed, ifname, o.CheckInterval, o.FastInterval, o.CheckTimeout, o.Rise, o.Fall, VIP, Port, policy, bs.String(), o.Advert, VIP)
}

// StartNode starts n's keepbitd and waits for its API socket.
func (L *Lab) StartNode(n *Node) error {
	logf, err := os.OpenFile(filepath.Join(n.dir, "keepbitd.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	_ = os.Remove(n.sock)
	n.cmd = exec.Command(L.opts.Keepbitd, "--config", n.cfg, "--pin-root", filepath.Join(n.dir, "bpf"),
		"--state-dir", filepath.Join(n.dir, "state"), "--api-socket", n.sock)
	n.cmd.Stdout, n.cmd.Stderr = logf, logf
	if err := n.Host.Do(n.cmd.Start); err != nil {
		logf.Close()
		return fmt.Errorf("start keepbitd on %s: %w", n.Name, err)
	}
	n.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { _ = cmd.Wait(); logf.Close(); close(done) }(n.cmd, n.done)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(n.sock); err == nil {
			return nil
		}
		select {
		case <-n.done:
			return fmt.Errorf("keepbitd on %s exited: %s", n.Name, L.NodeLog(n))
		case <-time.After(20 * time.Millisecond):
		}
	}
	return fmt.Errorf("keepbitd on %s did not open its API socket: %s", n.Name, L.NodeLog(n))
}

// Signal sends sig to n's keepbitd; SIGKILL also waits for it to end.
func (n *Node) Signal(sig syscall.Signal) {
	if n.cmd == nil || n.cmd.Process == nil {
		return
	}
	_ = n.cmd.Process.Signal(sig)
	if sig == syscall.SIGKILL || sig == syscall.SIGTERM {
		select {
		case <-n.done:
		case <-time.After(10 * time.Second):
			_ = n.cmd.Process.Kill()
			<-n.done
		}
	}
}

// Running reports whether n's keepbitd process is alive.
func (n *Node) Running() bool {
	select {
	case <-n.done:
		return false
	default:
		return n.done != nil
	}
}

// NodeLog is the tail of n's keepbitd log.
func (L *Lab) NodeLog(n *Node) string {
	b, _ := os.ReadFile(filepath.Join(n.dir, "keepbitd.log"))
	s := strings.TrimSpace(string(b))
	if len(s) > 2000 {
		s = s[len(s)-2000:]
	}
	return s
}

// nodeCallTimeout bounds each API call to a node: a node frozen by a
// scenario (SIGSTOP) still accepts connections on its socket (the
// kernel's backlog) and never answers, and the report must not wait on it.
const nodeCallTimeout = 3 * time.Second

// API is n's control API, every call bounded by nodeCallTimeout.
func (n *Node) API() *apiclient.Client { return apiclient.New(n.sock).WithTimeout(nodeCallTimeout) }

// Master is the node that says it is VRRP master (nil: none).
func (L *Lab) Master(ctx context.Context) *Node {
	for _, n := range L.Nodes {
		if !n.Running() {
			continue
		}
		vs, err := n.API().VIPs(ctx)
		if err == nil && len(vs) > 0 && vs[0].State == "master" {
			return n
		}
	}
	return nil
}

// Other is the node that is not n.
func (L *Lab) Other(n *Node) *Node {
	if L.Nodes[0] == n {
		return L.Nodes[1]
	}
	return L.Nodes[0]
}

// Settle waits until both nodes run, one is master, the other backup,
// and every backend is up on both.
func (L *Lab) Settle(ctx context.Context, within time.Duration) error {
	deadline := time.Now().Add(within)
	why := "not checked"
	for time.Now().Before(deadline) {
		why = L.unsettled(ctx)
		if why == "" {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("the lab did not settle within %v: %s", within, why)
}

func (L *Lab) unsettled(ctx context.Context) string {
	states := map[string]int{}
	for _, n := range L.Nodes {
		if !n.Running() {
			return n.Name + " is not running"
		}
		vs, err := n.API().VIPs(ctx)
		if err != nil || len(vs) == 0 {
			return fmt.Sprintf("%s: vip: %v", n.Name, err)
		}
		states[vs[0].State]++
		svcs, err := n.API().Services(ctx)
		if err != nil || len(svcs) == 0 {
			return fmt.Sprintf("%s: services: %v", n.Name, err)
		}
		for _, b := range svcs[0].ServiceStatus.Backends {
			if b.State != "up" || b.Health != "up" {
				return fmt.Sprintf("%s: backend %s is %s (health %s)", n.Name, b.Address, b.State, b.Health)
			}
		}
	}
	if states["master"] != 1 || states["backup"] != 1 {
		return fmt.Sprintf("VRRP states %v", states)
	}
	return ""
}

// Reconfigure rewrites every node's config with the service's
// when_all_down policy and backup group, and reloads the running nodes
// (a node started later reads the same file). Nothing is written when
// both are as they are.
func (L *Lab) Reconfigure(ctx context.Context, policy string, backupGroup bool) error {
	if policy == "drop" {
		policy = ""
	}
	if L.policy == policy && L.backupGroup == backupGroup {
		return nil
	}
	L.policy, L.backupGroup = policy, backupGroup
	var errs []error
	for _, n := range L.Nodes {
		if err := os.WriteFile(n.cfg, []byte(L.config(n.Name)), 0o600); err != nil {
			errs = append(errs, err)
			continue
		}
		if !n.Running() {
			continue
		}
		if _, err := n.API().Reload(ctx); err != nil {
			errs = append(errs, fmt.Errorf("%s: reload: %w", n.Name, err))
		}
	}
	return errors.Join(errs...)
}

// WaitBackends waits until every running node's dataplane holds each of
// bs in state ("up", "down", ...), for at most 10 s.
func (L *Lab) WaitBackends(ctx context.Context, state string, bs ...*Backend) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		why := ""
		for _, n := range L.Nodes {
			if !n.Running() {
				continue
			}
			svcs, err := n.API().Services(ctx)
			if err != nil || len(svcs) == 0 {
				why = fmt.Sprintf("%s: services: %v", n.Name, err)
				break
			}
			for _, b := range bs {
				for _, st := range svcs[0].ServiceStatus.Backends {
					if st.Address == b.Addr.String() && st.State != state {
						why = fmt.Sprintf("%s: %s is %s", n.Name, b.Name, st.State)
					}
				}
			}
		}
		if why == "" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("backends not %s within 10s: %s", state, why)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Events returns n's flight recorder.
func (n *Node) Events(ctx context.Context) ([]recorder.Event, error) {
	var out []recorder.Event
	err := n.API().Events(ctx, 0, false, func(_ []byte, e recorder.Event) error {
		out = append(out, e)
		return nil
	})
	return out, err
}

// Admin sets backend b's operator override on every running node.
func (L *Lab) Admin(ctx context.Context, b *Backend, action string) error {
	var errs []error
	for _, n := range L.Nodes {
		if !n.Running() {
			continue
		}
		if err := n.API().SetAdmin(ctx, "web", b.Addr.String(), adminOf(action)); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", n.Name, err))
		}
	}
	return errors.Join(errs...)
}

// Close stops every process and removes the lab.
func (L *Lab) Close() {
	for _, n := range L.Nodes {
		_ = n.cmd.Process.Signal(syscall.SIGCONT)
		n.Signal(syscall.SIGTERM)
		_ = n.Host.Do(exec.Command(L.opts.Keepbitd, "--config", n.cfg, "--pin-root", filepath.Join(n.dir, "bpf"), "--detach").Run)
		_ = syscall.Unmount(filepath.Join(n.dir, "bpf"), syscall.MNT_DETACH)
	}
	for _, b := range L.Backends {
		b.Close()
	}
	if L.l != nil {
		L.l.Close()
	}
	if L.dir != "" {
		os.RemoveAll(L.dir)
	}
}

func contains(s, sub string) bool { return strings.Contains(strings.ToLower(s), strings.ToLower(sub)) }
