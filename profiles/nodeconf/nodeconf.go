// Package nodeconf defines the rendered, per-node host configuration: the
// one schema that the site model produces (package profiles) and that the
// applier consumes (package firstboot), so that a node configured at first
// boot and one reconfigured on day 2 read exactly the same thing.
//
// Field names follow Airship Divingbell's values schema (conf.sysctl,
// conf.uamlite.users[].user_name, ...); Files and Units go beyond it.
//
// A rendered node is plain data: it can be written as JSON or YAML, and it
// never refers back to the site it was rendered from.
package nodeconf

// Node is the effective configuration of one machine, as `bellbuild render`
// prints it and as the applier reads it.
type Node struct {
	// Node is the inventory name of the machine ("" when rendered from a
	// profile alone).
	Node string `json:"node" yaml:"node"`
	// Profile is the profile the node boots.
	Profile string `json:"profile" yaml:"profile"`
	// Profiles is the resolved inheritance chain, parents first, Profile last.
	Profiles []string `json:"profiles" yaml:"profiles"`
	// MACs are the node's hardware addresses, lower case, colon separated.
	MACs []string `json:"macs,omitempty" yaml:"macs,omitempty"`
	// Labels are the node's labels (used by label overrides).
	Labels map[string]string `json:"labels,omitempty" yaml:"labels,omitempty"`
	// Domain is the node's DNS domain (site.yaml's, or its profile's).
	Domain string `json:"domain,omitempty" yaml:"domain,omitempty"`
	// FQDN is the node's fully qualified name (default NAME.DOMAIN): its
	// host certificate's subject.
	FQDN string `json:"fqdn,omitempty" yaml:"fqdn,omitempty"`
	// IPs are the node's addresses (default: its ip label), which its
	// certificates name.
	IPs []string `json:"ips,omitempty" yaml:"ips,omitempty"`
	// Services are the site's services placed on the node, by name
	// (SITE/services.yaml; see Facts).
	Services []string `json:"services,omitempty" yaml:"services,omitempty"`
	// Facts are minicluster's turndown flags: enable_SERVICE (a "-" in
	// the name written "_") for every service of the site, true on the
	// nodes it is placed on.
	Facts map[string]bool `json:"facts,omitempty" yaml:"facts,omitempty"`
	// Containers are those the placed services declare. The applier does
	// not run them (a unit can).
	Containers []Container `json:"containers,omitempty" yaml:"containers,omitempty"`
	// Conf is the host configuration to enforce.
	Conf Conf `json:"conf" yaml:"conf"`
	// Secrets are the secret values of Conf, each by its path, and
	// whether this document withholds it (see SecretRef).
	Secrets []SecretRef `json:"secrets,omitempty" yaml:"secrets,omitempty"`
	// Certificates are the certificates the site's PKI gives the node,
	// described (never their keys): what render shows. Conf.X509 carries
	// the issued material.
	Certificates []Certificate `json:"certificates,omitempty" yaml:"certificates,omitempty"`
	// Enrol is how the node enrols with serve (nil: the defaults).
	Enrol *Enrol `json:"enrol,omitempty" yaml:"enrol,omitempty"`
	// Install says the node installs itself onto a disk (nil: it boots
	// from the network).
	Install *Install `json:"install,omitempty" yaml:"install,omitempty"`
	// Upgrade says how an installed node takes a new image.
	Upgrade *Upgrade `json:"upgrade,omitempty" yaml:"upgrade,omitempty"`
	// Image is the image the node should run; serve sets it (from its
	// profile's manifest) on the configuration it hands out.
	Image *Image `json:"image,omitempty" yaml:"image,omitempty"`
}

// Certificate describes one certificate of a node: what it is for, the CA
// that signs it, its subject, usage and names. It holds no key material.
type Certificate struct {
	// For is "host" (the node's host certificate) or "NAME/client",
	// "NAME/server" for credential NAME.
	For string `json:"for" yaml:"for"`
	// CA is the sub-CA that signs it: hosts or services.
	CA string `json:"ca" yaml:"ca"`
	// Subject is its subject, "CN=...".
	Subject string `json:"subject" yaml:"subject"`
	// Usage is its extended key usage: client, server or both.
	Usage string `json:"usage" yaml:"usage"`
	// DNSNames and IPs are its subject alternative names.
	DNSNames []string `json:"dns_names,omitempty" yaml:"dns_names,omitempty"`
	IPs      []string `json:"ips,omitempty" yaml:"ips,omitempty"`
}

// Bundle is what an image carries: the rendered configuration of every node
// of one profile, plus the profile's own defaults for a machine that is not
// in the inventory. The boot-time init picks one Node from it.
type Bundle struct {
	// Profile is the profile the image was baked from.
	Profile string `json:"profile" yaml:"profile"`
	// Default is the configuration used when no node matches.
	Default Node `json:"default" yaml:"default"`
	// Nodes are the inventory entries that boot this profile, sorted by name.
	Nodes []Node `json:"nodes" yaml:"nodes"`
}

// Conf is the host configuration: one field per module, in Divingbell's
// schema. A nil or empty field means "this module manages nothing", which
// makes the applier revert whatever it managed before.
type Conf struct {
	Sysctl   map[string]string            `json:"sysctl,omitempty" yaml:"sysctl,omitempty"`
	Limits   map[string]Limit             `json:"limits,omitempty" yaml:"limits,omitempty"`
	Perm     *Perm                        `json:"perm,omitempty" yaml:"perm,omitempty"`
	Mounts   map[string]Mount             `json:"mounts,omitempty" yaml:"mounts,omitempty"`
	Ethtool  map[string]map[string]string `json:"ethtool,omitempty" yaml:"ethtool,omitempty"`
	Uamlite  *Uamlite                     `json:"uamlite,omitempty" yaml:"uamlite,omitempty"`
	Apt      *Apt                         `json:"apt,omitempty" yaml:"apt,omitempty"`
	Files    map[string]File              `json:"files,omitempty" yaml:"files,omitempty"`
	Units    map[string]Unit              `json:"units,omitempty" yaml:"units,omitempty"`
	Exec     map[string]Exec              `json:"exec,omitempty" yaml:"exec,omitempty"`
	Apparmor *Apparmor                    `json:"apparmor,omitempty" yaml:"apparmor,omitempty"`
	// Credentials are the X.509 credentials the node's services need
	// (minicluster's schema; merged by name across profiles).
	Credentials []Credential `json:"credentials,omitempty" yaml:"credentials,omitempty"`
	// X509 is what the site's PKI issued for Credentials. The site model
	// fills it in when it renders a node with its PKI at hand; it is not a
	// module and no profile can set it.
	X509 *X509 `json:"x509,omitempty" yaml:"x509,omitempty"`
}

// Modules lists the module names in the order the applier runs them
// (Divingbell's order, with files, units and credentials before exec so
// that scripts see them in place).
var Modules = []string{
	"sysctl", "limits", "perm", "mounts", "ethtool", "uamlite", "apt",
	"files", "units", "credentials", "exec", "apparmor",
}

// Limit is one pam_limits line, written to /etc/security/limits.d/.
type Limit struct {
	Domain string `json:"domain" yaml:"domain"`
	Type   string `json:"type" yaml:"type"` // soft | hard | -
	Item   string `json:"item" yaml:"item"`
	Value  string `json:"value" yaml:"value"`
}

// Perm sets owner, group and mode of existing paths.
type Perm struct {
	Paths []PermPath `json:"paths,omitempty" yaml:"paths,omitempty"`
	// RerunPolicy and RerunInterval are accepted as in Divingbell.
	RerunPolicy   string `json:"rerun_policy,omitempty" yaml:"rerun_policy,omitempty"`
	RerunInterval int    `json:"rerun_interval,omitempty" yaml:"rerun_interval,omitempty"`
}

// PermPath is one path (a glob) and the ownership and mode it must have.
type PermPath struct {
	Path        string `json:"path" yaml:"path"`
	Owner       string `json:"owner" yaml:"owner"`
	Group       string `json:"group" yaml:"group"`
	Permissions string `json:"permissions" yaml:"permissions"` // octal, e.g. "0640"
	// IgnoreMissing applies the rest of the configuration when the path
	// matches nothing; without it a missing path is an error and nothing of
	// the perm module is applied.
	IgnoreMissing bool `json:"ignore_missing,omitempty" yaml:"ignore_missing,omitempty"`
}

// Mount is a systemd .mount unit.
type Mount struct {
	MntTgt  string `json:"mnt_tgt" yaml:"mnt_tgt"`
	Device  string `json:"device" yaml:"device"`
	Type    string `json:"type" yaml:"type"`
	Options string `json:"options,omitempty" yaml:"options,omitempty"`
	Before  string `json:"before,omitempty" yaml:"before,omitempty"`
	After   string `json:"after,omitempty" yaml:"after,omitempty"`
}

// Uamlite manages local user accounts, their sudo access and SSH keys.
type Uamlite struct {
	PurgeExpiredUsers bool   `json:"purge_expired_users,omitempty" yaml:"purge_expired_users,omitempty"`
	Users             []User `json:"users,omitempty" yaml:"users,omitempty"`
}

// UnmanagedKeys is the one-element user_sshkeys value that leaves a user's
// authorized_keys alone.
const UnmanagedKeys = "Unmanaged"

// User is one local account.
type User struct {
	UserName string `json:"user_name" yaml:"user_name"`
	// UserCryptPasswd is a crypt(3) hash ($1$, $2a$, $5$, $6$); it is a
	// secret: never logged, never written world-readable.
	UserCryptPasswd string   `json:"user_crypt_passwd,omitempty" yaml:"user_crypt_passwd,omitempty"`
	UserSudo        bool     `json:"user_sudo,omitempty" yaml:"user_sudo,omitempty"`
	UserSSHKeys     []string `json:"user_sshkeys,omitempty" yaml:"user_sshkeys,omitempty"`
}

// Apt manages Debian packages.
type Apt struct {
	Packages      []Package    `json:"packages,omitempty" yaml:"packages,omitempty"`
	Repositories  []Repository `json:"repositories,omitempty" yaml:"repositories,omitempty"`
	BlacklistPkgs []string     `json:"blacklistpkgs,omitempty" yaml:"blacklistpkgs,omitempty"`
	// Strict removes every package that is neither required by the base
	// system, nor requested, nor whitelisted.
	Strict        bool     `json:"strict,omitempty" yaml:"strict,omitempty"`
	WhitelistPkgs []string `json:"whitelistpkgs,omitempty" yaml:"whitelistpkgs,omitempty"`
	Upgrade       bool     `json:"upgrade,omitempty" yaml:"upgrade,omitempty"`
}

// Package is one requested package.
type Package struct {
	Name           string    `json:"name" yaml:"name"`
	Version        string    `json:"version,omitempty" yaml:"version,omitempty"`
	AllowDowngrade bool      `json:"allow_downgrade,omitempty" yaml:"allow_downgrade,omitempty"`
	Repo           string    `json:"repo,omitempty" yaml:"repo,omitempty"`
	Debconf        []Debconf `json:"debconf,omitempty" yaml:"debconf,omitempty"`
}

// Debconf is one debconf-set-selections answer. Answers to password
// questions are secrets.
type Debconf struct {
	Question     string `json:"question" yaml:"question"`
	QuestionType string `json:"question_type" yaml:"question_type"`
	Answer       string `json:"answer" yaml:"answer"`
}

// Repository is one apt source.
type Repository struct {
	URL           string   `json:"url" yaml:"url"`
	Distributions []string `json:"distributions" yaml:"distributions"`
	Components    []string `json:"components" yaml:"components"`
	Subrepos      []string `json:"subrepos,omitempty" yaml:"subrepos,omitempty"`
	GPGKey        string   `json:"gpgkey,omitempty" yaml:"gpgkey,omitempty"`
}

// File is a whole file the node must have (beyond Divingbell). The map key
// in Conf.Files is its absolute path.
type File struct {
	Content string `json:"content" yaml:"content"`
	Mode    string `json:"mode,omitempty" yaml:"mode,omitempty"` // octal, default "0644"
	Owner   string `json:"owner,omitempty" yaml:"owner,omitempty"`
	Group   string `json:"group,omitempty" yaml:"group,omitempty"`
	// Secret makes the content a secret whatever the mode (a mode that
	// others cannot read does too): kept out of every public
	// configuration, never shown in a plan.
	Secret bool `json:"secret,omitempty" yaml:"secret,omitempty"`
}

// Unit is a systemd unit (beyond Divingbell). The map key in Conf.Units is
// the unit name, e.g. "kubelet.service". Content, when set, is written to
// /etc/systemd/system/NAME; Enabled enables or disables it.
type Unit struct {
	Content string `json:"content,omitempty" yaml:"content,omitempty"`
	Enabled *bool  `json:"enabled,omitempty" yaml:"enabled,omitempty"`
}

// Exec is one script, run in key order.
type Exec struct {
	Data string            `json:"data" yaml:"data"`
	Args []string          `json:"args,omitempty" yaml:"args,omitempty"`
	Env  map[string]string `json:"env,omitempty" yaml:"env,omitempty"`
	// RerunPolicy: always (default) | never | once_successfully.
	RerunPolicy string `json:"rerun_policy,omitempty" yaml:"rerun_policy,omitempty"`
	// BlockingPolicy: foreground (default) | background |
	// foreground_halt_pod_on_failure.
	BlockingPolicy string `json:"blocking_policy,omitempty" yaml:"blocking_policy,omitempty"`
	// Timeout in seconds (Divingbell's script_timeout); default 1800.
	Timeout int `json:"timeout,omitempty" yaml:"timeout,omitempty"`
	// RerunInterval and RetryInterval in seconds (>= 60); 0 means unset.
	RerunInterval        int   `json:"rerun_interval,omitempty" yaml:"rerun_interval,omitempty"`
	RetryInterval        int   `json:"retry_interval,omitempty" yaml:"retry_interval,omitempty"`
	RerunIntervalPersist *bool `json:"rerun_interval_persist,omitempty" yaml:"rerun_interval_persist,omitempty"`
	RetryIntervalPersist *bool `json:"retry_interval_persist,omitempty" yaml:"retry_interval_persist,omitempty"`
}

// Apparmor manages AppArmor profiles.
type Apparmor struct {
	ComplainMode bool `json:"complain_mode,omitempty" yaml:"complain_mode,omitempty"`
	// Profiles maps a file name under /etc/apparmor.d/ to its text.
	Profiles map[string]string `json:"profiles,omitempty" yaml:"profiles,omitempty"`
}

// Credential is one X.509 credential a service needs, in minicluster's
// schema plus the owner of its files. The applier installs it under
// /etc/credentials/x509/NAME/{client,server}/.
type Credential struct {
	// Name is the service's name: a safe path component.
	Name string `json:"name" yaml:"name"`
	// EnableClient asks for a client certificate (default true).
	EnableClient *bool `json:"enable_client,omitempty" yaml:"enable_client,omitempty"`
	// ClientCertMode is the client certificate's extended key usage:
	// client (default), server or both.
	ClientCertMode string `json:"client_cert_mode,omitempty" yaml:"client_cert_mode,omitempty"`
	// EnableServer asks for a server certificate (default true).
	EnableServer *bool `json:"enable_server,omitempty" yaml:"enable_server,omitempty"`
	// ServerCertMode is the server certificate's extended key usage:
	// server (default), client or both.
	ServerCertMode string `json:"server_cert_mode,omitempty" yaml:"server_cert_mode,omitempty"`
	// ExtraSAN are more DNS names for the server certificate; the node's
	// domain is appended to each.
	ExtraSAN []string `json:"extra_san,omitempty" yaml:"extra_san,omitempty"`
	// Owner and Group own the credential's directories and private keys
	// (default root, and the owner's primary group).
	Owner string `json:"owner,omitempty" yaml:"owner,omitempty"`
	Group string `json:"group,omitempty" yaml:"group,omitempty"`
}

// Certificate modes: which extended key usages a certificate carries.
const (
	CertModeClient = "client"
	CertModeServer = "server"
	CertModeBoth   = "both"
)

// CertModes are the values of client_cert_mode and server_cert_mode.
var CertModes = []string{CertModeClient, CertModeServer, CertModeBoth}

// ClientEnabled reports whether c wants a client certificate.
func (c Credential) ClientEnabled() bool { return c.EnableClient == nil || *c.EnableClient }

// ServerEnabled reports whether c wants a server certificate.
func (c Credential) ServerEnabled() bool { return c.EnableServer == nil || *c.EnableServer }

// ClientMode is c's client_cert_mode, defaulted.
func (c Credential) ClientMode() string {
	if c.ClientCertMode == "" {
		return CertModeClient
	}
	return c.ClientCertMode
}

// ServerMode is c's server_cert_mode, defaulted.
func (c Credential) ServerMode() string {
	if c.ServerCertMode == "" {
		return CertModeServer
	}
	return c.ServerCertMode
}

// X509 is the issued material of a node's credentials: public
// certificates and, when the node may have them here, private keys.
type X509 struct {
	// CA is the PEM of the CA certificates a peer needs to verify the
	// site's certificates (/etc/credentials/x509/ca.pem).
	CA string `json:"ca,omitempty" yaml:"ca,omitempty"`
	// CRL is the PEM of the CAs' revocation lists
	// (/etc/credentials/x509/crl.pem).
	CRL string `json:"crl,omitempty" yaml:"crl,omitempty"`
	// Host is the node's host certificate (hosts CA), installed at
	// /etc/credentials/x509/host/{cert.pem,private_key.pem}.
	Host *IssuedCert `json:"host,omitempty" yaml:"host,omitempty"`
	// Credentials maps a credential's name to its certificates.
	Credentials map[string]IssuedCredential `json:"credentials,omitempty" yaml:"credentials,omitempty"`
}

// IssuedCredential is the client and server certificate of one credential.
type IssuedCredential struct {
	Client *IssuedCert `json:"client,omitempty" yaml:"client,omitempty"`
	Server *IssuedCert `json:"server,omitempty" yaml:"server,omitempty"`
}

// IssuedCert is one certificate and, optionally, its private key. Without
// the key the applier reports the credential as pending (the key is
// delivered later).
type IssuedCert struct {
	// Cert is the certificate, PEM.
	Cert string `json:"cert" yaml:"cert"`
	// Key is the PKCS#8 private key, PEM.
	Key Secret `json:"key,omitzero" yaml:"key,omitempty"`
}
