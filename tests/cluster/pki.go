package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// The cluster's PKI: one CA signs every serving and client certificate. Keys
// are ECDSA P-256 (fast to make) stored as PKCS#8, which both Go and rustls read.

type keyPair struct {
	cert    *x509.Certificate
	key     crypto.Signer
	certPEM []byte
	keyPEM  []byte
}

type certSpec struct {
	cn       string
	orgs     []string
	dns      []string
	ips      []net.IP
	server   bool
	client   bool
	isCA     bool
	validFor time.Duration
}

func newKeyPair(spec certSpec, signer *keyPair) (*keyPair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: spec.cn, Organization: spec.orgs},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(spec.validFor),
		DNSNames:              spec.dns,
		IPAddresses:           spec.ips,
		BasicConstraintsValid: true,
	}
	if spec.isCA {
		tmpl.IsCA = true
		tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature
	} else {
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		if spec.server {
			tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
		}
		if spec.client {
			tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
		}
	}
	parent, parentKey := tmpl, crypto.Signer(key)
	if signer != nil {
		parent, parentKey = signer.cert, signer.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return &keyPair{
		cert:    cert,
		key:     key,
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	}, nil
}

func (kp *keyPair) write(dir, name string) error {
	if err := os.WriteFile(filepath.Join(dir, name+".crt"), kp.certPEM, 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, name+".key"), kp.keyPEM, 0o600)
}

// clusterPKI is what `up` hands to the components.
type clusterPKI struct {
	ca, apiserver, admin, controllerManager, scheduler, kubeletClient *keyPair
}

func makePKI(dir string, serviceIP net.IP, extraIPs ...net.IP) (*clusterPKI, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	const year = 365 * 24 * time.Hour
	ca, err := newKeyPair(certSpec{cn: "zen-lead-local-ca", isCA: true, validFor: 10 * year}, nil)
	if err != nil {
		return nil, fmt.Errorf("CA: %w", err)
	}
	p := &clusterPKI{ca: ca}
	specs := []struct {
		name string
		dst  **keyPair
		spec certSpec
	}{
		{"apiserver", &p.apiserver, certSpec{
			cn:     "kube-apiserver",
			dns:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
			ips:    append([]net.IP{net.ParseIP("127.0.0.1"), serviceIP}, extraIPs...),
			server: true, validFor: year,
		}},
		{"admin", &p.admin, certSpec{cn: "zen-lead-admin", orgs: []string{"system:masters"}, client: true, validFor: year}},
		{"controller-manager", &p.controllerManager, certSpec{cn: "system:kube-controller-manager", client: true, validFor: year}},
		{"scheduler", &p.scheduler, certSpec{cn: "system:kube-scheduler", client: true, validFor: year}},
		{"apiserver-kubelet-client", &p.kubeletClient, certSpec{cn: "kube-apiserver-kubelet-client", orgs: []string{"system:masters"}, client: true, validFor: year}},
	}
	if err := ca.write(dir, "ca"); err != nil {
		return nil, err
	}
	for _, s := range specs {
		kp, err := newKeyPair(s.spec, ca)
		if err != nil {
			return nil, fmt.Errorf("%s certificate: %w", s.name, err)
		}
		if err := kp.write(dir, s.name); err != nil {
			return nil, err
		}
		*s.dst = kp
	}
	// Service-account token signing key (ES256).
	sa, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	saDER, err := x509.MarshalPKCS8PrivateKey(sa)
	if err != nil {
		return nil, err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(sa.Public())
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "sa.key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: saDER}), 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "sa.pub"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o644); err != nil {
		return nil, err
	}
	return p, nil
}
