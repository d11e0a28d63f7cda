package vrrp

import (
	"os"
	"testing"

	"github.com/keepbit/keepbit/internal/privtest"
)

func TestMain(m *testing.M) { os.Exit(privtest.Main(m)) }
