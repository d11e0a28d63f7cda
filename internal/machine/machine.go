// Package machine describes the machine a report or benchmark ran on, so
// every published figure carries its CPU, kernel and the command behind it.
package machine

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Info says where and how a measurement ran.
type Info struct {
	CPUs    int    `json:"cpus"`
	CPU     string `json:"cpu"`
	Kernel  string `json:"kernel"`
	Go      string `json:"go"`
	Date    string `json:"date"`
	Command string `json:"command"`
}

// This describes this machine, now, and the command.
func This(command string) Info {
	var u unix.Utsname
	_ = unix.Uname(&u)
	m := Info{CPUs: runtime.NumCPU(), Kernel: unix.ByteSliceToString(u.Release[:]), Go: runtime.Version(),
		Date: time.Now().UTC().Format(time.RFC3339), Command: command}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	return m
}

// String is the one-line description reports print.
func (m Info) String() string {
	return fmt.Sprintf("%s: %d CPUs (%s), kernel %s, %s", m.Date, m.CPUs, m.CPU, m.Kernel, m.Go)
}
