package flowshare

import (
	"bytes"
	"fmt"
	"os"
)

// LoadKey reads the shared secret from path: the file's content with
// surrounding white space removed (so `openssl rand -base64 48 > key`
// works), at least MinKeyLen bytes. The file must not be readable by group
// or others: whoever reads it can inject flows into every node.
func LoadKey(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("%s has mode %04o: it must not be readable or writable by group or others (chmod 600)", path, perm)
	}
	data := make([]byte, 0, st.Size())
	buf := bytes.NewBuffer(data)
	if _, err := buf.ReadFrom(f); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	key := bytes.TrimSpace(buf.Bytes())
	if len(key) < MinKeyLen {
		return nil, fmt.Errorf("%s holds a key of %d bytes: at least %d are required (openssl rand -base64 48)", path, len(key), MinKeyLen)
	}
	return key, nil
}
