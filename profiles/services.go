package profiles

import (
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/profiles/placement"
)

// ServicesFile is the site's services, SITE/services.yaml, in
// minicluster's schema: a map of service name to its metadata. It is
// optional; its keys are checked as strictly as a profile's. See
// docs/config.md.
const ServicesFile = "services.yaml"

// AllInstances is Service.Instances for a service on every node of its
// group (num_instances: all).
const AllInstances = placement.All

// Service is one service of services.yaml and where the site places it.
type Service struct {
	Name string
	// Group is the scheduling_group as written: a profile name,
	// label:KEY=VALUE, or "" for every node.
	Group string
	// GroupSize is the number of nodes in the group.
	GroupSize int
	// Instances is num_instances, or AllInstances.
	Instances int
	// Spread is the label whose values the instances are spread over.
	Spread string
	// User is the service's account, owner of its keys.
	User string
	// Hosts are the nodes it is placed on, sorted.
	Hosts []string
	// Credentials are the names of its service_credentials.
	Credentials []string
	// MonitoringEndpoints and PublicEndpoints are as written.
	MonitoringEndpoints []Endpoint
	PublicEndpoints     []Endpoint
}

// Endpoint is one monitoring_endpoints (JobName) or public_endpoints
// (Name) entry.
type Endpoint struct {
	Name    string `json:"name,omitempty"`
	JobName string `json:"job_name,omitempty"`
	// Type is static (the placed hosts, each at Port) or dynamic (the
	// service's DNS name at Port).
	Type   string `json:"type"`
	Port   int    `json:"port"`
	Scheme string `json:"scheme"`
}

// Endpoint types.
const (
	EndpointStatic  = "static"
	EndpointDynamic = "dynamic"
)

// service is one parsed service.
type service struct {
	name string
	pos  Pos    // its key
	path string // its field path (the name, or ["name"])

	groupText string // as written ("" every node)
	groupPos  Pos
	// group: a profile (every node whose chain holds it), or a label.
	groupProfile       string
	labelKey, labelVal string
	groupOK            bool // the group parsed

	instances    int // or placement.All
	instancesPos Pos
	spread       string
	spreadPos    Pos
	user         string
	userPos      Pos
	scrape       bool
	hostsOf      []string
	hostsOfPos   []Pos

	conf  *value
	creds []*value // conf.credentials items, owner added
	// credNames are the credentials' names, credPos where each was set,
	// credIdx its index in service_credentials.
	credNames []string
	credPos   []Pos
	credIdx   []int
	// allCreds and allIdx are creds and credIdx before a credential
	// another service has was dropped: each is checked.
	allCreds   []*value
	allIdx     []int
	monitoring []Endpoint
	monPos     []Pos
	monIdx     []int
	public     []Endpoint
	containers []nodeconf.Container

	// Set by placement.
	placed    bool // placement succeeded
	hosts     []string
	groupSize int
	// layer is the service's conf and generated files, merged on each of
	// its hosts after the profile chain (see effective); layerNulls says
	// it holds nulls (which remove what the chain set).
	layer      *value
	layerNulls bool
}

// nodeServices is a node's `services: {pin: [..], deny: [..]}`.
type nodeServices struct {
	pin, deny       []string
	pinPos, denyPos []Pos
}

var (
	// serviceNameRE is a service name: a DNS label (it names files and
	// the DNS name NAME.DOMAIN), which also makes a fact name.
	serviceNameRE = regexp.MustCompile(`^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$`)
	userNameRE    = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)
	jobNameRE     = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.-]{0,62}$`)
	envNameRE     = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
)

var serviceKeys = []string{"scheduling_group", "num_instances", "service_credentials", "monitoring_endpoints",
	"public_endpoints", "containers", "conf", "user", "spread", "scrape", "hosts_of"}

var credentialKeys = []string{"name", "enable_client", "client_cert_mode", "enable_server", "server_cert_mode", "extra_san"}

var containerType = reflect.TypeFor[nodeconf.Container]()

func init() { fieldsOf(containerType) } // decode reads the cache without writing it

// parseServices reads services.yaml.
func (s *Site) parseServices(root *value, errs *ErrorList) {
	if root.kind == kNull || !expectFileMap(root, errs) {
		return
	}
	for _, e := range root.ents {
		path := joinKey("", e.key)
		if !serviceNameRE.MatchString(e.key) {
			if keyLikeRE.MatchString(e.key) {
				errs.Add(e.kpos, path, "bad service name %q: a DNS label (lower-case letters, digits and inner '-', starting with a letter, at most 63)", e.key)
			} else {
				errs.Add(e.kpos, "", "a service name that is not a DNS label (not shown)")
			}
			continue
		}
		svc := &service{name: e.key, pos: e.kpos, path: path, instances: placement.All}
		s.parseService(svc, e.val, errs)
		s.services = append(s.services, svc)
	}
	// Names are unique (duplicate keys are a YAML error): sort them.
	sortServices(s.services)
	s.checkServiceRefs(errs)
}

func sortServices(list []*service) {
	slices.SortFunc(list, func(a, b *service) int { return strings.Compare(a.name, b.name) })
}

func (s *Site) parseService(svc *service, v *value, errs *ErrorList) {
	if v.kind == kNull || !expectMap(v, svc.path, errs) {
		return
	}
	for _, e := range v.ents {
		fp := joinKey(svc.path, e.key)
		val := e.val
		switch e.key {
		case "scheduling_group":
			svc.groupPos = val.pos
			if val.kind == kNull {
				continue
			}
			if text, ok := scalarString(val, fp, errs); ok {
				svc.groupText = text
				s.parseGroup(svc, text, fp, errs)
			}
		case "num_instances":
			svc.instancesPos = val.pos
			if val.kind == kScalar && val.text == "all" {
				continue
			}
			n, ok := scalarInt(val)
			if !ok || n < 0 {
				errs.Add(val.pos, fp, "want a number of instances (0 or more) or all, got %s", val.describe())
				continue
			}
			svc.instances = n
		case "spread":
			if text, ok := scalarString(val, fp, errs); ok {
				if !labelRE.MatchString(text) {
					errs.Add(val.pos, fp, "bad label name %q", text)
					continue
				}
				svc.spread, svc.spreadPos = text, val.pos
			}
		case "user":
			if text, ok := scalarString(val, fp, errs); ok {
				if !userNameRE.MatchString(text) {
					errs.Add(val.pos, fp, "%q is not a user name", text)
					continue
				}
				svc.user, svc.userPos = text, val.pos
			}
		case "scrape":
			b, ok := scalarBool(val)
			if !ok {
				errs.Add(val.pos, fp, "want true or false, got %s", val.describe())
			}
			svc.scrape = b
		case "hosts_of":
			if val.kind != kNull {
				svc.hostsOf, svc.hostsOfPos = stringList(val, fp, errs)
			}
		case "conf":
			if c := val.entry("credentials"); c != nil && val.kind == kMap {
				errs.Add(c.kpos, fp+".credentials", "a service's credentials are its service_credentials")
				val = without(val, "credentials")
			}
			svc.conf, _ = parseConf(val, fp, false, errs)
		case "service_credentials":
			svc.parseCredentials(val, fp, errs)
		case "monitoring_endpoints":
			svc.monitoring, svc.monPos, svc.monIdx = parseEndpoints(val, fp, "job_name", errs)
		case "public_endpoints":
			svc.public, _, _ = parseEndpoints(val, fp, "name", errs)
		case "containers":
			svc.parseContainers(val, fp, errs)
		default:
			errs.Add(e.kpos, fp, "unknown key %q%s", e.key, suggestList(e.key, serviceKeys))
		}
	}
	// The credentials' owner is the service's user.
	if svc.user != "" {
		for i, c := range svc.creds {
			owner := &value{kind: kScalar, pos: svc.userPos, tag: "!!str", text: svc.user}
			out := *c
			out.ents = append(append([]entry(nil), c.ents...), entry{key: "owner", kpos: svc.userPos, val: owner})
			svc.creds[i] = &out
		}
	}
	svc.allCreds, svc.allIdx = slices.Clone(svc.creds), slices.Clone(svc.credIdx)
}

// parseGroup reads scheduling_group: label:KEY=VALUE or a profile name.
func (s *Site) parseGroup(svc *service, text, path string, errs *ErrorList) {
	at := svc.groupPos
	if rest, ok := strings.CutPrefix(text, "label:"); ok {
		k, v, ok := strings.Cut(rest, "=")
		switch {
		case !ok || v == "":
			errs.Add(at, path, "%q: want label:KEY=VALUE or a profile name", text)
		case !labelRE.MatchString(k):
			errs.Add(at, path, "%q: bad label name %q", text, k)
		default:
			svc.labelKey, svc.labelVal, svc.groupOK = k, v, true
		}
		return
	}
	if s.profiles[text] == nil {
		errs.Add(at, path, "%q names no profile%s (a group is a profile name or label:KEY=VALUE)", text, suggestList(text, s.names))
		return
	}
	svc.groupProfile, svc.groupOK = text, true
}

func (svc *service) parseCredentials(v *value, path string, errs *ErrorList) {
	if v.kind == kNull {
		return
	}
	if v.kind != kList {
		errs.Add(v.pos, path, "expected a list, got %s", v.describe())
		return
	}
	for i, it := range v.items {
		ip := path + nodeconf.Index(i)
		if !expectMap(it, ip, errs) {
			continue
		}
		ok := true
		for _, e := range it.ents {
			if !slices.Contains(credentialKeys, e.key) {
				errs.Add(e.kpos, joinKey(ip, e.key), "unknown key %q%s", e.key, suggestList(e.key, credentialKeys))
				ok = false
			}
		}
		name := it.get("name")
		if name == nil {
			errs.Add(it.pos, ip+".name", "required")
			continue
		}
		text, good := scalarString(name, ip+".name", errs)
		if !good {
			continue
		}
		if !nodeconf.ValidCredentialName(text) {
			errs.Add(name.pos, ip+".name", "%q is not a safe name: lower-case letters, digits, inner - and . (it names a directory and the DNS name NAME.DOMAIN)", text)
			continue
		}
		if !ok {
			continue
		}
		svc.creds = append(svc.creds, it)
		svc.credNames = append(svc.credNames, text)
		svc.credPos = append(svc.credPos, name.pos)
		svc.credIdx = append(svc.credIdx, i)
	}
}

var (
	endpointTypes = []string{EndpointStatic, EndpointDynamic}
	// schemes for monitoring endpoints (Prometheus scrapes HTTP) and
	// public ones.
	monitoringSchemes = []string{"http", "https"}
	publicSchemes     = []string{"http", "https", "tcp", "udp"}
)

// parseEndpoints reads monitoring_endpoints (nameKey job_name) or
// public_endpoints (nameKey name): the good ones, where each name was set
// and its index.
func parseEndpoints(v *value, path, nameKey string, errs *ErrorList) ([]Endpoint, []Pos, []int) {
	if v.kind == kNull {
		return nil, nil, nil
	}
	if v.kind != kList {
		errs.Add(v.pos, path, "expected a list, got %s", v.describe())
		return nil, nil, nil
	}
	keys := []string{nameKey, "type", "port", "scheme"}
	schemes := publicSchemes
	if nameKey == "job_name" {
		schemes = monitoringSchemes
	}
	var out []Endpoint
	var pos []Pos
	var idx []int
	seen := map[string]int{}
	for i, it := range v.items {
		ip := path + nodeconf.Index(i)
		if !expectMap(it, ip, errs) {
			continue
		}
		ep := Endpoint{Scheme: schemes[0]}
		ok := true
		for _, k := range []string{nameKey, "type", "port"} {
			if it.get(k) == nil {
				errs.Add(it.pos, ip+"."+k, "required")
				ok = false
			}
		}
		var name string
		var namePos Pos
		for _, e := range it.ents {
			fp := joinKey(ip, e.key)
			switch e.key {
			case nameKey:
				text, good := scalarString(e.val, fp, errs)
				switch {
				case !good:
					ok = false
				case nameKey == "job_name" && !jobNameRE.MatchString(text):
					errs.Add(e.val.pos, fp, "%q: a job name is letters, digits, '_', '.' and '-', starting with a letter or '_' (it names a file)", text)
					ok = false
				case nameKey == "name" && !serviceNameRE.MatchString(text):
					errs.Add(e.val.pos, fp, "%q is not a DNS label", text)
					ok = false
				default:
					if j, dup := seen[text]; dup {
						errs.Add(e.val.pos, fp, "%q is also %s", text, path+nodeconf.Index(j))
						ok = false
					}
					seen[text] = i
					name, namePos = text, e.val.pos
				}
			case "type":
				text, good := scalarString(e.val, fp, errs)
				if good && !slices.Contains(endpointTypes, text) {
					errs.Add(e.val.pos, fp, "%q: want %s", text, strings.Join(endpointTypes, " or "))
					good = false
				}
				ok = ok && good
				ep.Type = text
			case "port":
				n, good := scalarInt(e.val)
				if !good || n < 1 || n > 65535 {
					errs.Add(e.val.pos, fp, "want a port (1 to 65535), got %s", e.val.describe())
					ok = false
				}
				ep.Port = n
			case "scheme":
				text, good := scalarString(e.val, fp, errs)
				if good && !slices.Contains(schemes, text) {
					errs.Add(e.val.pos, fp, "%q: want %s", text, strings.Join(schemes, ", "))
					good = false
				}
				ok = ok && good
				ep.Scheme = text
			default:
				errs.Add(e.kpos, fp, "unknown key %q%s", e.key, suggestList(e.key, keys))
				ok = false
			}
		}
		if !ok {
			continue
		}
		if nameKey == "job_name" {
			ep.JobName = name
		} else {
			ep.Name = name
		}
		out = append(out, ep)
		pos = append(pos, namePos)
		idx = append(idx, i)
	}
	return out, pos, idx
}

func (svc *service) parseContainers(v *value, path string, errs *ErrorList) {
	if v.kind == kNull {
		return
	}
	if v.kind != kList {
		errs.Add(v.pos, path, "expected a list, got %s", v.describe())
		return
	}
	seen := map[string]int{}
	for i, it := range v.items {
		ip := path + nodeconf.Index(i)
		if !expectMap(it, ip, errs) {
			continue
		}
		if e := it.entry("service"); e != nil {
			errs.Add(e.kpos, ip+".service", "set by bellbuild: the service that declares the container")
			it = without(it, "service")
		}
		var c nodeconf.Container
		var local ErrorList
		decode(it, reflect.ValueOf(&c).Elem(), &fpath{root: ip}, &local)
		*errs = append(*errs, local...)
		ok := len(local) == 0
		for _, k := range []string{"name", "image"} {
			if it.get(k) == nil {
				errs.Add(it.pos, ip+"."+k, "required")
				ok = false
			}
		}
		if nv := it.get("name"); nv != nil && c.Name != "" {
			if !serviceNameRE.MatchString(c.Name) {
				errs.Add(nv.pos, ip+".name", "%q is not a DNS label", c.Name)
				ok = false
			} else if j, dup := seen[c.Name]; dup {
				errs.Add(nv.pos, ip+".name", "%q is also %s", c.Name, path+nodeconf.Index(j))
				ok = false
			}
			seen[c.Name] = i
		}
		if iv := it.get("image"); iv != nil && iv.kind == kScalar && (c.Image == "" || strings.ContainsAny(c.Image, " \t\n")) {
			errs.Add(iv.pos, ip+".image", "%q is not an image reference", c.Image)
			ok = false
		}
		if ev := it.get("env"); ev != nil && ev.kind == kMap {
			for _, e := range ev.ents {
				if !envNameRE.MatchString(e.key) {
					errs.Add(e.kpos, joinKey(ip+".env", e.key), "%q is not an environment variable name", e.key)
					ok = false
				}
			}
		}
		if pv := it.get("ports"); pv != nil && pv.kind == kList {
			for j, p := range c.Ports {
				if p < 1 || p > 65535 {
					errs.Add(pv.items[j].pos, ip+".ports"+nodeconf.Index(j), "want a port (1 to 65535), got %d", p)
					ok = false
				}
			}
		}
		if ok {
			c.Service = svc.name
			svc.containers = append(svc.containers, c)
		}
	}
}

// checkServiceRefs checks what one service says of others: a credential
// name is one service's, a job name is one endpoint's, and hosts_of names
// services.
func (s *Site) checkServiceRefs(errs *ErrorList) {
	type first struct {
		svc string
		pos Pos
	}
	creds, jobs := map[string]first{}, map[string]first{}
	byName := map[string]*service{}
	for _, svc := range s.services {
		byName[svc.name] = svc
	}
	for _, svc := range s.services {
		keep := svc.creds[:0]
		var names []string
		var poss []Pos
		var idx []int
		for i, name := range svc.credNames {
			at := svc.credPos[i]
			if f, dup := creds[name]; dup {
				errs.Add(at, svc.path+".service_credentials"+nodeconf.Index(svc.credIdx[i])+".name",
					"credential %q is also service %s's (%s): a credential belongs to one service", name, f.svc, ref(at, f.pos))
				continue
			}
			creds[name] = first{svc.name, at}
			keep = append(keep, svc.creds[i])
			names = append(names, name)
			poss = append(poss, at)
			idx = append(idx, svc.credIdx[i])
		}
		svc.creds, svc.credNames, svc.credPos, svc.credIdx = keep, names, poss, idx
		for i, ep := range svc.monitoring {
			at := svc.monPos[i]
			if f, dup := jobs[ep.JobName]; dup && f.svc != svc.name {
				errs.Add(at, svc.path+".monitoring_endpoints"+nodeconf.Index(svc.monIdx[i])+".job_name",
					"job %q is also service %s's (%s): it names one target file", ep.JobName, f.svc, ref(at, f.pos))
				continue
			}
			jobs[ep.JobName] = first{svc.name, at}
		}
		for i, other := range svc.hostsOf {
			at := svc.hostsOfPos[i]
			switch {
			case other == svc.name:
				errs.Add(at, svc.path+".hosts_of", "%q is this service: its hosts get its list anyway", other)
			case byName[other] == nil:
				errs.Add(at, svc.path+".hosts_of", "unknown service %q%s", other, suggestList(other, serviceNames(s.services)))
			}
		}
	}
}

func serviceNames(list []*service) []string {
	out := make([]string, len(list))
	for i, svc := range list {
		out[i] = svc.name
	}
	return out
}

// parseNodeServices reads a node's services: {pin: [..], deny: [..]}.
func parseNodeServices(v *value, path string, errs *ErrorList) nodeServices {
	var ns nodeServices
	if v.kind == kNull || !expectMap(v, path, errs) {
		return ns
	}
	for _, e := range v.ents {
		fp := joinKey(path, e.key)
		switch e.key {
		case "pin", "deny":
			if e.val.kind == kNull {
				continue
			}
			names, pos := stringList(e.val, fp, errs)
			seen := map[string]bool{}
			for i, n := range names {
				if seen[n] {
					errs.Add(pos[i], fp, "%q is listed twice", n)
					continue
				}
				seen[n] = true
				if e.key == "pin" {
					ns.pin, ns.pinPos = append(ns.pin, n), append(ns.pinPos, pos[i])
				} else {
					ns.deny, ns.denyPos = append(ns.deny, n), append(ns.denyPos, pos[i])
				}
			}
		default:
			errs.Add(e.kpos, fp, "unknown key %q (want pin and deny)", e.key)
		}
	}
	return ns
}

// instancesText is num_instances as written.
func instancesText(n int) string {
	if n == placement.All {
		return "all"
	}
	return strconv.Itoa(n)
}

// groupName names a service's group in messages.
func (svc *service) groupName() string {
	if svc.groupText == "" {
		return "every node"
	}
	return "group " + svc.groupText
}

// checkServiceConf checks a service's conf and credentials alone with the
// applier's rules, so that a service placed nowhere is checked too; each
// problem is at the line that set the value.
func checkServiceConf(svc *service, errs *ErrorList) {
	tree := svc.confTree(svc.allCreds)
	if tree == nil {
		return
	}
	var local ErrorList
	conf, refs := decodeConf(tree, &local)
	keys := keyFinder{}
	for _, err := range dropRefErrors(conf.Validate(), refs) {
		var fe *nodeconf.FieldError
		if !errors.As(err, &fe) {
			local.Add(svc.pos, svc.path+".conf", "%v", err)
			continue
		}
		path := svc.path + ".conf." + fe.Path
		if rest, ok := strings.CutPrefix(fe.Path, "credentials["); ok {
			// credentials[I] is service_credentials[credIdx[I]].
			i, tail, _ := strings.Cut(rest, "]")
			if n, err := strconv.Atoi(i); err == nil && n < len(svc.allIdx) {
				path = svc.path + ".service_credentials" + nodeconf.Index(svc.allIdx[n]) + tail
			}
		}
		local.Add(keys.lookup(tree, fe.Path), path, "%s", fe.Msg)
	}
	*errs = append(*errs, local...)
}

// confTree is the service's conf with credentials creds.
func (svc *service) confTree(list []*value) *value {
	tree := svc.conf
	if len(list) > 0 {
		creds := &value{kind: kList, pos: svc.pos, items: list}
		add := &value{kind: kMap, pos: svc.pos, ents: []entry{{key: "credentials", kpos: svc.pos, val: creds}}}
		tree = merge(tree, add, mergeOpts{named: true}, "", 0)
	}
	return tree
}

// String is for messages.
func (svc *service) String() string { return fmt.Sprintf("service %s", svc.name) }
