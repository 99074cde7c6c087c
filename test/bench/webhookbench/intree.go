package main

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"time"
)

// intercept lets ExternalDNS's in-tree alibabacloud provider, which always
// calls https://pvtz.aliyuncs.com, reach the emulator: an HTTPS_PROXY on
// loopback that answers CONNECT itself, terminates TLS with a certificate
// for pvtz.aliyuncs.com from a CA of its own (given to the process as
// SSL_CERT_FILE) and forwards each request to the emulator. Nothing leaves
// the machine: the client never resolves or dials the real name.
type intercept struct {
	ln     net.Listener
	caFile string
	target *url.URL
	cert   tls.Certificate
}

func newIntercept(dir, emulatorURL string) (*intercept, error) {
	target, err := url.Parse(emulatorURL)
	if err != nil {
		return nil, err
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "webhookbench CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	leafTmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "pvtz.aliyuncs.com"},
		DNSNames: []string{"pvtz.aliyuncs.com"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o644); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	ic := &intercept{ln: ln, caFile: caFile, target: target,
		cert: tls.Certificate{Certificate: [][]byte{leafDER}, PrivateKey: key}}
	go ic.serve()
	return ic, nil
}

func (ic *intercept) URL() string { return "http://" + ic.ln.Addr().String() }
func (ic *intercept) Close()      { ic.ln.Close() }

func (ic *intercept) serve() {
	for {
		c, err := ic.ln.Accept()
		if err != nil {
			return
		}
		go ic.handle(c)
	}
}

func (ic *intercept) handle(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil || req.Method != http.MethodConnect || req.Host != "pvtz.aliyuncs.com:443" {
		fmt.Fprintf(c, "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
		return
	}
	fmt.Fprintf(c, "HTTP/1.1 200 Connection Established\r\n\r\n")
	tc := tls.Server(&prefixConn{Conn: c, r: br}, &tls.Config{Certificates: []tls.Certificate{ic.cert}})
	defer tc.Close()
	tr := bufio.NewReader(tc)
	for {
		in, err := http.ReadRequest(tr)
		if err != nil {
			return
		}
		out := in.Clone(in.Context())
		out.RequestURI = ""
		out.URL.Scheme, out.URL.Host = ic.target.Scheme, ic.target.Host
		out.Host = "pvtz.aliyuncs.com"
		resp, err := http.DefaultTransport.RoundTrip(out)
		if err != nil {
			fmt.Fprintf(tc, "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
			return
		}
		err = resp.Write(tc)
		resp.Body.Close()
		in.Body.Close()
		if err != nil {
			return
		}
	}
}

// prefixConn reads what the CONNECT reader buffered first.
type prefixConn struct {
	net.Conn
	r io.Reader
}

func (p *prefixConn) Read(b []byte) (int, error) { return p.r.Read(b) }

// inTreeConfig writes the provider's --alibaba-cloud-config-file.
func inTreeConfig(dir, keyID, secret, vpc string) (string, error) {
	b, _ := json.Marshal(map[string]string{"regionId": "cn-hangzhou", "accessKeyId": keyID, "accessKeySecret": secret, "vpcId": vpc})
	p := filepath.Join(dir, "alibaba-cloud.json")
	return p, os.WriteFile(p, b, 0o600)
}
