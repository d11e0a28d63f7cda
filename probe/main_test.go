package probe

import (
	"os"
	"testing"

	"github.com/keepbit/keepbit/internal/privtest"
)

func TestMain(m *testing.M) {
	if os.Getenv(listenerEnv) != "" {
		os.Exit(listenerMain())
	}
	os.Exit(privtest.Main(m))
}
