package config

// BGP is the `bgp:` section: this node's speaker, its peers and what it
// announces. Nil when the section is absent (no BGP).
type BGP struct{}

func (d *decoder) bgpDefaults(c *Config) {}

func (d *decoder) validateBGP(c *Config) {}
