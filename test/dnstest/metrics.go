package dnstest

import (
	"bufio"
	"io"
	"strconv"
	"strings"
)

// Metrics is a scrape of a Prometheus text endpoint: "name{labels}" (or
// "name") -> value.
type Metrics map[string]float64

// ParseMetrics reads the Prometheus text format; comments and lines that
// do not end in a number are skipped.
func ParseMetrics(r io.Reader) (Metrics, error) {
	out := Metrics{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out, sc.Err()
}

// Sum adds every series of a metric (only those whose labels contain
// match, unless match is "").
func (m Metrics) Sum(name, match string) float64 {
	t := 0.0
	for k, v := range m {
		if (k == name || strings.HasPrefix(k, name+"{")) && strings.Contains(k, match) {
			t += v
		}
	}
	return t
}
