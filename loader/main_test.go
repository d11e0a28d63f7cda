package loader

import (
	"os"
	"testing"

	"github.com/keepbit/keepbit/internal/privtest"
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(helperMain())
	}
	os.Exit(privtest.Main(m))
}
