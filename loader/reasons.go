package loader

// Reason is why the dataplane did what it did with a packet; every packet
// is counted under exactly one.
type Reason = keepbitReason

// ReasonNames maps each reason to the name used in metrics and the CLI.
var reasonNames = [...]string{
	keepbitReasonREASON_PASS_NOT_IP:         "pass_not_ip",
	keepbitReasonREASON_PASS_MALFORMED_L2:   "pass_malformed_l2",
	keepbitReasonREASON_PASS_MALFORMED_L3:   "pass_malformed_l3",
	keepbitReasonREASON_PASS_EXT_HEADERS:    "pass_ext_headers",
	keepbitReasonREASON_PASS_MALFORMED_L4:   "pass_malformed_l4",
	keepbitReasonREASON_PASS_NO_SERVICE:     "pass_no_service",
	keepbitReasonREASON_PASS_FRAG_UNTRACKED: "pass_frag_untracked",
	keepbitReasonREASON_PASS_NO_BACKEND:     "pass_no_backend",
	keepbitReasonREASON_DROP_NO_BACKEND:     "drop_no_backend",
	keepbitReasonREASON_DROP_NO_TX_PORT:     "drop_no_tx_port",
	keepbitReasonREASON_DROP_ADJUST_HEAD:    "drop_adjust_head",
	keepbitReasonREASON_TX:                  "tx",
	keepbitReasonREASON_REDIRECT:            "redirect",
	keepbitReasonREASON_ICMP_TO_BACKEND:     "icmp_to_backend",
	keepbitReasonREASON_PASS_ICMP_CONTROL:   "pass_icmp_control",
}

// ReasonName returns the metric name of r.
func ReasonName(r Reason) string {
	if int(r) < len(reasonNames) && reasonNames[r] != "" {
		return reasonNames[r]
	}
	return "unknown"
}
