// Package e2e tests bin/pvtz-webhook with the real client nobody here
// wrote: ExternalDNS v0.22 (sigs.k8s.io/external-dns, built from its module
// by test/tools/externaldns and cached under $DNSACCEL_CACHE/bin), against
// the test/cluster API server, with bin/pvtz-webhook writing to
// bin/cloud-emulator through the real SDK, beside a real bin/pvtz-sync.
package e2e
