// Stamps the tools with the same version and commit information the plugins carry,
// so `i2i-stats --version` and `gst-inspect-1.0` agree on what was built.
fn main() {
    gst_plugin_version_helper::info()
}
