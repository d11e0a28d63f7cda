package ownership

import (
	"os"
	"testing"

	"github.com/keepbit/keepbit/internal/privtest"
)

// TestMain runs the package's privileged tests (a real dataplane on a
// veth) as root in a private network and mount namespace; the others run
// anywhere.
func TestMain(m *testing.M) { os.Exit(privtest.Main(m)) }
