package bench

import (
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"math"
	"os"
	"strings"
	"unicode"
)

// canvas is a tiny raster drawing surface (standard library only).
type canvas struct{ img *image.RGBA }

func newCanvas(w, h int) *canvas {
	c := &canvas{img: image.NewRGBA(image.Rect(0, 0, w, h))}
	draw.Draw(c.img, c.img.Bounds(), image.NewUniform(color.White), image.Point{}, draw.Src)
	return c
}

func (c *canvas) rect(x0, y0, x1, y1 int, col color.Color) {
	draw.Draw(c.img, image.Rect(x0, y0, x1, y1), image.NewUniform(col), image.Point{}, draw.Src)
}

const glyphW, glyphH = 6, 8 // cell incl. spacing, unscaled

func textWidth(s string, scale int) int { return len([]rune(s)) * glyphW * scale }

// text draws s with its top-left corner at (x, y).
func (c *canvas) text(x, y int, s string, scale int, col color.Color) {
	for _, r := range s {
		g, ok := glyphs[unicode.ToUpper(r)]
		if !ok {
			g = glyphs['?']
		}
		for gy, row := range g {
			for gx, px := range row {
				if px == '#' {
					c.rect(x+gx*scale, y+gy*scale, x+(gx+1)*scale, y+(gy+1)*scale, col)
				}
			}
		}
		x += glyphW * scale
	}
}

type bar struct {
	label string
	value float64
	text  string
	col   color.Color
	hatch bool // figure limited by something other than the server (drawn lighter)
}

var (
	colInk   = color.RGBA{0x20, 0x20, 0x20, 0xff}
	colGrid  = color.RGBA{0xdd, 0xdd, 0xdd, 0xff}
	colOurs  = color.RGBA{0x1f, 0x77, 0xb4, 0xff}
	colPeer  = color.RGBA{0x99, 0x99, 0x99, 0xff}
	colLight = color.RGBA{0xc8, 0xd8, 0xe8, 0xff}
	colMark  = color.RGBA{0xd6, 0x27, 0x28, 0xff}
)

// hbars draws a titled horizontal bar chart into the box at (x, y, w, h),
// with a dashed marker line at mark (if > 0).
func (c *canvas) hbars(x, y, w, h int, title string, bars []bar, mark float64, markLabel string) {
	const scale = 2
	c.text(x, y, title, scale, colInk)
	top := y + 14*scale
	labelW := 0
	for _, b := range bars {
		labelW = max(labelW, textWidth(b.label, scale))
	}
	vmax := mark
	for _, b := range bars {
		vmax = math.Max(vmax, b.value)
	}
	if vmax <= 0 {
		vmax = 1
	}
	gx := x + labelW + 12
	gw := w - (gx - x) - 17*scale*glyphW // room for the value text
	if len(bars) == 0 {
		return
	}
	rowH := (h - (top - y)) / len(bars)
	barH := min(rowH*2/3, 36)
	for i := 1; i <= 4; i++ { // light vertical grid
		xx := gx + gw*i/4
		c.rect(xx, top, xx+1, top+rowH*len(bars), colGrid)
	}
	c.rect(gx-1, top, gx+1, top+rowH*len(bars), colInk)
	// The target marker goes under the bars and labels.
	if mark > 0 {
		mx := gx + int(float64(gw)*mark/vmax)
		for yy := top; yy < top+rowH*len(bars); yy += 10 {
			c.rect(mx-1, yy, mx+1, min(yy+6, top+rowH*len(bars)), colMark)
		}
		c.text(mx-textWidth(markLabel, 1)/2, top-glyphH-2, markLabel, 1, colMark)
	}
	for i, b := range bars {
		cy := top + i*rowH + rowH/2
		c.text(x, cy-glyphH*scale/2, b.label, scale, colInk)
		bw := int(float64(gw) * b.value / vmax)
		col := b.col
		c.rect(gx, cy-barH/2, gx+bw, cy+barH/2, col)
		if b.hatch {
			for xx := gx; xx < gx+bw; xx += 8 {
				c.rect(xx, cy-barH/2, min(xx+3, gx+bw), cy+barH/2, colLight)
			}
		}
		c.text(gx+bw+8, cy-glyphH*scale/2, b.text, scale, colInk)
	}
}

// writePlot renders the CPU-per-answer and max-QPS charts as a PNG.
func writePlot(path string, rep *Report) error {
	var ok []SystemResult
	for _, r := range rep.Results {
		if r.OK() {
			ok = append(ok, r)
		}
	}
	const w, panelH = 1100, 250
	c := newCanvas(w, 3*panelH+60)
	title := fmt.Sprintf("DNS CACHE BENCHMARK - %s - SERVER ON 1 CORE", rep.Start.Format("2006-01-02"))
	c.text(20, 14, title, 2, colInk)
	colFor := func(r SystemResult) color.Color {
		if r.Name == "node-cache" {
			return colOurs
		}
		return colPeer
	}
	var cpu, qps, miss []bar
	for _, r := range ok {
		lbl := strings.ToUpper(r.Name)
		cpu = append(cpu, bar{label: lbl, value: r.CPUPerAns, text: fmt.Sprintf("%.2f US", r.CPUPerAns), col: colFor(r)})
		qps = append(qps, bar{label: lbl, value: r.Max.QPS, text: fmt.Sprintf("%.0fK (CPU %.0f%%)", r.Max.QPS/1000, 100*r.MaxUtil),
			col: colFor(r), hatch: r.MaxUtil < 0.9})
		add := float64(r.Miss.P50-r.Direct.P50) / 1000
		miss = append(miss, bar{label: lbl, value: math.Max(add, 0), text: fmt.Sprintf("%+.0f US", add), col: colFor(r)})
	}
	// Target markers for node-cache.
	cpuMark, qpsMark := 0.0, 0.0
	if r, ok := rep.result("coredns"); ok {
		cpuMark = 0.5 * r.CPUPerAns
	}
	if r, ok := rep.result("unbound"); ok {
		if cpuMark == 0 || 1.25*r.CPUPerAns < cpuMark {
			cpuMark = 1.25 * r.CPUPerAns
		}
		qpsMark = r.Max.QPS
	}
	c.hbars(20, 50, w-40, panelH-20, fmt.Sprintf("CPU US PER CACHED ANSWER AT %.0fK QPS (LOWER IS BETTER)", rep.Config.FixedRate/1000),
		cpu, cpuMark, "TARGET")
	c.hbars(20, 50+panelH, w-40, panelH-20, "MAX CACHED QPS, DNSPERF UNLIMITED (HIGHER IS BETTER; STRIPED = SERVER < 90% CPU)",
		qps, qpsMark, "TARGET")
	c.hbars(20, 50+2*panelH, w-40, panelH-20, "MISS PATH: ADDED P50 LATENCY OVER UPSTREAM ALONE (LOWER IS BETTER)",
		miss, 100, "TARGET 100 US")
	return c.savePNG(path)
}

// savePNG writes the canvas to path as a PNG.
func (c *canvas) savePNG(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := png.Encode(f, c.img); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
