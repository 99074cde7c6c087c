package alicloud

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"strings"
)

// NewClientToken returns a fresh ClientToken (32 hex digits; the APIs take
// up to 64 ASCII characters). A creating call keeps its token across
// retries — and across restarts when the caller stores it — so the service
// answers a repeat with what the first call made.
func NewClientToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// DerivedClientToken is a ClientToken that is the same for the same parts
// (32 hex digits of their SHA-256).
func DerivedClientToken(parts ...string) string {
	h := sha256.Sum256([]byte(strings.Join(parts, "\x00")))
	return hex.EncodeToString(h[:16])
}
