package main

import "crypto/tls"

// insecureTLS is only used for loopback health probes of components that
// serve with self-signed certificates they generate at start.
func insecureTLS() *tls.Config {
	return &tls.Config{InsecureSkipVerify: true} //nolint:gosec // loopback liveness only
}
