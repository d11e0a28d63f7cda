package config

// FlowSharing is the `flow_sharing:` section. Nil when absent (off).
type FlowSharing struct{}

func (d *decoder) flowSharingDefaults(c *Config) {}

func (d *decoder) validateFlowSharing(c *Config) {}
