//go:build tools

// Package externaldns pins ExternalDNS (sigs.k8s.io/external-dns), the real
// client of bin/pvtz-webhook in the externaldns/webhook e2e test and the
// benchmark. externaldns/webhook/e2e builds it into the cache
// ($DNSACCEL_CACHE/bin/external-dns-<version>).
package externaldns

import _ "sigs.k8s.io/external-dns"
