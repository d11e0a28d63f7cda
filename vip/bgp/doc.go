// Package bgp announces VIPs to upstream routers so that every Keepbit
// node carries them at once and the routers spread flows over the nodes
// by ECMP.
//
// Speaker embeds GoBGP v3 as a library (no extra daemon): it keeps the
// sessions to the routers and the /32 and /128 routes this node
// announces. Health decides which routes should be announced (route
// health injection): a VIP is withdrawn at once when it has no usable
// backend, when the dataplane fails or while the node drains, and is
// announced again only after a stretch of continuous health that grows
// while it keeps flapping. The package knows nothing of BFD: BFD's
// verdicts come in through Speaker.PeerDown and PeerUp.
package bgp
