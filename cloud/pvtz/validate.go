package pvtz

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
)

// validLabel: letters, digits, '-' and '_' (service labels), 1..63 bytes.
func validLabel(l string) bool {
	if l == "" || len(l) > 63 {
		return false
	}
	for _, c := range l {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_':
		default:
			return false
		}
	}
	return true
}

func validDomain(name string) bool {
	name = strings.TrimSuffix(name, ".")
	if name == "" || len(name) > 253 {
		return false
	}
	for _, l := range strings.Split(name, ".") {
		if !validLabel(l) {
			return false
		}
	}
	return true
}

// validRr: "@", "*", or labels (a leading "*" label allowed).
func validRr(rr string) bool {
	if rr == "@" || rr == "*" {
		return true
	}
	if len(rr) > 253 {
		return false
	}
	for i, l := range strings.Split(rr, ".") {
		if l == "*" && i == 0 {
			continue
		}
		if !validLabel(l) {
			return false
		}
	}
	return true
}

func validValue(typ, v string) error {
	switch typ {
	case "A":
		ip := net.ParseIP(v)
		if ip == nil || ip.To4() == nil || strings.Contains(v, ":") {
			return errors.New("not an IPv4 address")
		}
	case "AAAA":
		ip := net.ParseIP(v)
		if ip == nil || !strings.Contains(v, ":") {
			return errors.New("not an IPv6 address")
		}
	case "CNAME", "PTR", "MX":
		if !validDomain(v) {
			return errors.New("not a domain name")
		}
	case "TXT":
		if len(v) > 512 {
			return errors.New("longer than 512 bytes")
		}
	case "SRV":
		// "priority weight port target"
		f := strings.Fields(v)
		if len(f) != 4 {
			return errors.New(`want "priority weight port target"`)
		}
		for i, lim := range []int{65535, 65535, 65535} {
			n, err := strconv.Atoi(f[i])
			if err != nil || n < 0 || n > lim {
				return fmt.Errorf("field %d %q", i+1, f[i])
			}
		}
		if !validDomain(f[3]) {
			return errors.New("target is not a domain name")
		}
	}
	return nil
}
