package flowshare

import (
	"reflect"
	"testing"
)

// FuzzDecode: no input panics the decoder, and whatever the parser takes
// encodes back to a datagram that decodes to the same message. The
// fuzzer cannot forge a tag, so the parser behind the MAC is fuzzed
// directly as well (a key holder could send it anything).
func FuzzDecode(f *testing.F) {
	c := testCodec(f)
	seeds := []Message{
		{Type: TypeSyncRequest, Node: 1, Seq: 1, Nonce: 9},
		{Type: TypeSyncEnd, Node: 1, Seq: 2, Nonce: 9, Datagrams: 1, FlowCount: 3},
		{Type: TypeFlows, Node: 1, Seq: 3, Flows: []Flow{
			flow("192.0.2.10", 80, 6, "198.51.100.1:40000", "10.0.0.1"),
			flow("192.0.2.10", 80, 6, "198.51.100.2:40001", "10.0.0.1"),
			flow("2001:db8::10", 443, 17, "[2001:db8:1::1]:5", "2001:db8:2::1"),
		}},
		{Type: TypeFlows, Flags: FlagSnapshot, Nonce: 4, Node: 1, Seq: 4, Flows: []Flow{
			flow("::ffff:192.0.2.1", 0, 1, "192.0.2.2:0", "::ffff:10.0.0.1"),
		}},
	}
	for _, m := range seeds {
		b, _, err := c.Encode(nil, &m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var m Message
		if err := c.Decode(b, &m); err == nil {
			roundTrip(t, c, &m, true)
		} else if ReasonOf(err) == 0 {
			t.Fatalf("error without a reason: %v", err)
		}
		if len(b) >= tagLen {
			body := b[:len(b)-tagLen]
			if err := parse(body, &m); err == nil && len(body) <= MaxDatagram-tagLen {
				roundTrip(t, c, &m, false)
			}
		}
	})
}

func roundTrip(t *testing.T, c *Codec, m *Message, authentic bool) {
	b, n, err := c.Encode(nil, m)
	if err != nil {
		t.Fatalf("decoded %+v (authentic %v) does not encode: %v", m, authentic, err)
	}
	if n != len(m.Flows) {
		t.Fatalf("re-encoding kept %d of %d flows", n, len(m.Flows))
	}
	var back Message
	if err := c.Decode(b, &back); err != nil {
		t.Fatalf("re-encoded datagram refused: %v", err)
	}
	if len(back.Flows) == 0 && len(m.Flows) == 0 {
		back.Flows, m.Flows = nil, nil
	}
	if !reflect.DeepEqual(&back, m) {
		t.Fatalf("round trip\n got %+v\nwant %+v", back, *m)
	}
}
