// Package e2e tests the sync end to end: the real bin/pvtz-sync and
// bin/pvtzctl processes against the test/cluster API server and the
// PrivateZone emulator over loopback HTTP, through the real SDK.
package e2e
