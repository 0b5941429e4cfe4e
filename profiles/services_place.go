package profiles

import (
	"encoding/json"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"

	"github.com/bellbuild/bellbuild/profiles/nodeconf"
	"github.com/bellbuild/bellbuild/profiles/placement"
)

// Where the generated cluster files go on the hosts that need them.
const (
	// HostsDir holds NAME.hosts, the hosts of service NAME (one FQDN a
	// line), on its own hosts (unless it has num_instances: all) and on
	// those of services that list it in hosts_of.
	HostsDir = "/etc/bellbuild/services"
	// FileSDDir holds JOB.json, a Prometheus file_sd target file for each
	// monitoring endpoint of the site, on the hosts of services with
	// scrape: true.
	FileSDDir = "/etc/prometheus/file_sd"
)

// fqdn is a node's name in the generated files: the FQDN its host
// certificate carries (its name when the site has no domain).
func (s *Site) fqdn(node string) string {
	if nd, ok := s.byName[node]; ok {
		return s.nodeFQDN(nd)
	}
	return node
}

// serviceDNS is a service's DNS name, which dynamic endpoints point at:
// NAME.DOMAIN, the name its server certificates carry (its name when the
// site has no domain).
func (s *Site) serviceDNS(svc *service) string {
	if s.domain != "" {
		return svc.name + "." + s.domain
	}
	return svc.name
}

// memberOf reports whether node n is in svc's group.
func (s *Site) memberOf(svc *service, n *node) bool {
	switch {
	case svc.groupProfile != "":
		r, ok := s.resolved[n.Profile]
		return ok && slices.Contains(r.chain, svc.groupProfile)
	case svc.labelKey != "":
		v, ok := n.Labels[svc.labelKey]
		return ok && v == svc.labelVal
	}
	return true
}

// marks are the nodes that pin or deny each service, with where.
type marks map[string]map[string]Pos // service → node → position

func (m marks) add(svc, node string, at Pos) {
	if m[svc] == nil {
		m[svc] = map[string]Pos{}
	}
	m[svc][node] = at
}

// nodeMarks checks the nodes' pins and denies (unknown services,
// contradictions) and returns them.
func (s *Site) nodeMarks(errs *ErrorList) (pins, denies marks) {
	pins, denies = marks{}, marks{}
	known := map[string]bool{}
	for _, svc := range s.services {
		known[svc.name] = true
	}
	names := serviceNames(s.services)
	for _, n := range s.nodes {
		ns := n.services
		for i, name := range ns.deny {
			if !known[name] {
				errs.Add(ns.denyPos[i], n.path+".services.deny", "unknown service %q%s", name, suggestList(name, names))
				continue
			}
			denies.add(name, n.Name, ns.denyPos[i])
		}
		for i, name := range ns.pin {
			at := ns.pinPos[i]
			switch {
			case !known[name]:
				errs.Add(at, n.path+".services.pin", "unknown service %q%s", name, suggestList(name, names))
			case denies[name][n.Name] != Pos{}:
				errs.Add(at, n.path+".services.pin", "node %q pins and denies %s (denied at column %d): contradictory", n.Name, name, denies[name][n.Name].Col)
			default:
				pins.add(name, n.Name, at)
			}
		}
	}
	return pins, denies
}

// request is svc's placement request: its group, with pins and denies;
// spread says whether a node of the group has the spread label.
func (s *Site) request(svc *service, pins, denies marks) (r placement.Request, spread bool) {
	r = placement.Request{Service: svc.name, Instances: svc.instances, Spread: svc.spread != ""}
	// The profiles whose chain holds the group's profile.
	var inGroup map[string]bool
	if svc.groupProfile != "" {
		inGroup = map[string]bool{}
		for name, res := range s.resolved {
			inGroup[name] = slices.Contains(res.chain, svc.groupProfile)
		}
	}
	svcPins, svcDenies := pins[svc.name], denies[svc.name]
	for _, n := range s.nodes {
		switch {
		case inGroup != nil && !inGroup[n.Profile]:
			continue
		case inGroup == nil && !s.memberOf(svc, n):
			continue
		}
		_, pinned := svcPins[n.Name]
		_, denied := svcDenies[n.Name]
		value, has := n.Labels[svc.spread]
		spread = spread || has
		r.Members = append(r.Members, placement.Member{Node: n.Name, Spread: value, Pinned: pinned, Denied: denied})
	}
	return r, spread
}

// placeServices checks every service against the inventory and places
// it, then builds each service's layer (its conf and the generated files,
// which depend on where every service went). What keeps a service from
// being placed is reported at its line, and the service goes nowhere.
func (s *Site) placeServices(errs *ErrorList) {
	s.placedOn = map[string][]*service{}
	s.noFacts = make(map[string]bool, len(s.services))
	for _, svc := range s.services {
		s.noFacts[nodeconf.FactName(svc.name)] = false
	}
	pins, denies := s.nodeMarks(errs)
	for _, svc := range s.services {
		checkServiceConf(svc, errs)
		if svc.groupText != "" && !svc.groupOK {
			continue // reported
		}
		r, spread := s.request(svc, pins, denies)
		svc.groupSize = len(r.Members)
		if !s.checkPlacement(svc, r, spread, pins, denies, errs) {
			continue
		}
		hosts, err := placement.Place(r)
		if err != nil { // checkPlacement refuses what Place refuses
			errs.Add(svc.pos, svc.path, "internal error: %v", err)
			continue
		}
		svc.hosts, svc.placed = hosts, true
		for _, h := range hosts {
			s.placedOn[h] = append(s.placedOn[h], svc)
		}
	}
	byName := map[string]*service{}
	for _, svc := range s.services {
		byName[svc.name] = svc
	}
	for _, svc := range s.services {
		svc.layer = s.serviceLayer(svc, byName)
		svc.layerNulls = svc.layer != nil && hasNull(svc.layer)
	}
}

// checkPlacement reports what keeps r from being placed: an empty group,
// a spread label no node of it has, a pin from outside it, more instances
// than its eligible nodes, more pins than instances.
func (s *Site) checkPlacement(svc *service, r placement.Request, hasSpread bool, pins, denies marks, errs *ErrorList) bool {
	groupAt, groupPath := svc.groupPos, svc.path+".scheduling_group"
	if svc.groupText == "" {
		groupAt, groupPath = svc.pos, svc.path
	}
	ok := true
	if len(r.Members) == 0 {
		switch {
		case svc.groupProfile != "":
			errs.Add(groupAt, groupPath, "group %s is empty: no node's profile is or inherits %s", svc.groupText, svc.groupProfile)
		case svc.labelKey != "":
			errs.Add(groupAt, groupPath, "group %s is empty: no node has the label %s=%s", svc.groupText, svc.labelKey, svc.labelVal)
		default:
			errs.Add(groupAt, groupPath, "the inventory has no node to place %s on", svc.name)
		}
		ok = false
	}
	denied := []string{}
	for _, m := range r.Members {
		if m.Denied {
			denied = append(denied, m.Node)
		}
	}
	if svc.spread != "" && len(r.Members) > 0 && !hasSpread {
		errs.Add(svc.spreadPos, svc.path+".spread", "no node of %s has the label %s: nothing to spread over", svc.groupName(), svc.spread)
		ok = false
	}
	var pinned []string
	for _, node := range slices.Sorted(maps.Keys(pins[svc.name])) {
		at := pins[svc.name][node]
		if n := s.byName[node]; !s.memberOf(svc, n) {
			errs.Add(at, n.path+".services.pin", "node %q (profile %s) is not in %s: it cannot pin %s", node, n.Profile, svc.groupName(), svc.name)
			ok = false
			continue
		}
		pinned = append(pinned, node)
	}
	if svc.instances == placement.All || len(r.Members) == 0 {
		return ok
	}
	at, path := svc.instancesPos, svc.path+".num_instances"
	switch eligible := len(r.Members) - len(denied); {
	case svc.instances > len(r.Members):
		errs.Add(at, path, "num_instances is %d, but %s has %d nodes", svc.instances, svc.groupName(), len(r.Members))
		ok = false
	case svc.instances > eligible:
		errs.Add(at, path, "num_instances is %d, but %d of the %d nodes of %s deny the service (%s)", svc.instances,
			len(denied), len(r.Members), svc.groupName(), s.listMarks(at, denied, denies[svc.name]))
		ok = false
	}
	if len(pinned) > svc.instances {
		errs.Add(at, path, "%d nodes pin the service (%s), more than num_instances %d", len(pinned), s.listMarks(at, pinned, pins[svc.name]), svc.instances)
		ok = false
	}
	return ok
}

// listMarks names nodes with where each pins or denies: "a at
// nodes.yaml:3, b at nodes.yaml:9".
func (s *Site) listMarks(at Pos, nodes []string, where map[string]Pos) string {
	parts := make([]string, len(nodes))
	for i, n := range nodes {
		parts[i] = n + " at " + lineOf(at, where[n])
	}
	return strings.Join(parts, ", ")
}

// lineOf names the line of pos in a message about at: "line N" in the
// same file, else "FILE:N" with the file's base name (a site's files are
// known by their names).
func lineOf(at, pos Pos) string {
	if pos.File == at.File {
		return fmt.Sprintf("line %d", pos.Line)
	}
	return fmt.Sprintf("%s:%d", filepath.Base(pos.File), pos.Line)
}

// strValue is a generated scalar, set "at" pos.
func strValue(text string, pos Pos) *value {
	return &value{kind: kScalar, pos: pos, tag: "!!str", text: text}
}

// serviceLayer is what a host of svc gets besides its credentials: the
// service's conf, then its generated files (the host lists it needs and,
// for a scraper, every monitoring endpoint's target file).
func (s *Site) serviceLayer(svc *service, byName map[string]*service) *value {
	files := &value{kind: kMap, pos: svc.pos}
	add := func(path, content string) {
		f := &value{kind: kMap, pos: svc.pos, ents: []entry{
			{key: "content", kpos: svc.pos, val: strValue(content, svc.pos)},
			{key: "mode", kpos: svc.pos, val: strValue("0644", svc.pos)},
		}}
		files.ents = append(files.ents, entry{key: path, kpos: svc.pos, val: f})
	}
	// Its own list, unless it is on every node of its group (then the
	// list is the group, on every node of it: hosts_of still gives it).
	lists := slices.Clone(svc.hostsOf)
	if svc.instances != placement.All {
		lists = append(lists, svc.name)
	}
	slices.Sort(lists)
	for _, name := range slices.Compact(lists) {
		if other := byName[name]; other != nil {
			add(HostsDir+"/"+name+".hosts", s.hostsFile(other))
		}
	}
	if svc.scrape {
		for _, other := range s.services {
			for _, ep := range other.monitoring {
				add(FileSDDir+"/"+ep.JobName+".json", s.fileSD(other, ep))
			}
		}
	}
	gen := &value{kind: kMap, pos: svc.pos, ents: []entry{{key: "files", kpos: svc.pos, val: files}}}
	return merge(svc.conf, gen, mergeOpts{named: true}, "", 0)
}

// hostsFile is HostsDir/NAME.hosts: it changes only when the list does.
func (s *Site) hostsFile(svc *service) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# The hosts of service %s, one per line (bellbuild services).\n", svc.name)
	for _, h := range svc.hosts {
		b.WriteString(s.fqdn(h) + "\n")
	}
	return b.String()
}

// fileSD is a Prometheus file_sd target file for one monitoring endpoint:
// the placed hosts at the port (static), or the service's DNS name
// (dynamic), labelled with the job, the service and the scheme.
func (s *Site) fileSD(svc *service, ep Endpoint) string {
	targets := []string{}
	if ep.Type == EndpointDynamic {
		targets = append(targets, fmt.Sprintf("%s:%d", s.serviceDNS(svc), ep.Port))
	} else {
		for _, h := range svc.hosts {
			targets = append(targets, fmt.Sprintf("%s:%d", s.fqdn(h), ep.Port))
		}
	}
	type group struct {
		Targets []string          `json:"targets"`
		Labels  map[string]string `json:"labels"`
	}
	data, _ := json.MarshalIndent([]group{{Targets: targets, Labels: map[string]string{
		"job": ep.JobName, "service": svc.name, "__scheme__": ep.Scheme,
	}}}, "", "  ")
	return string(data) + "\n"
}

// mergeServices lays the services placed on a host over its conf c, in
// order: each one's layer, then their credentials appended to the host's
// conf.credentials. Small layers without nulls are merged together first,
// and the result into c once: the same result (the schema fixes each
// value's kind), without indexing the host's large maps once per service.
func mergeServices(c *value, svcs []*service) *value {
	if len(svcs) == 0 {
		return c
	}
	named := mergeOpts{named: true}
	together := true
	var creds []*value
	for _, svc := range svcs {
		together = together && !svc.layerNulls
		creds = append(creds, svc.creds...)
	}
	if together {
		layer := svcs[0].layer
		for _, svc := range svcs[1:] {
			layer = merge(layer, svc.layer, named, "", 0)
		}
		c = merge(c, layer, named, "", 0)
	} else {
		for _, svc := range svcs {
			c = merge(c, svc.layer, named, "", 0)
		}
	}
	if len(creds) == 0 {
		return c
	}
	var items []*value
	if cur := c.get("credentials"); cur != nil && cur.kind == kList {
		items = append(items, cur.items...)
	}
	items = append(items, creds...)
	// Appended, not merged by name: a service's credential named like one
	// the host already has is an error (nodeconf's check of the list),
	// not a silent merge of the two.
	list := &value{kind: kList, pos: svcs[0].pos, items: items}
	out := without(c, "credentials")
	if out == c {
		cp := *c
		out = &cp
	}
	out.ents = append(out.ents[:len(out.ents):len(out.ents)], entry{key: "credentials", kpos: list.pos, val: list})
	return out
}

// setServices fills in a rendered node's services, facts and containers
// (placed: the services placed on it, by name).
func (s *Site) setServices(n *nodeconf.Node, placed []*service) {
	if len(s.services) == 0 {
		return
	}
	n.Facts = maps.Clone(s.noFacts)
	for _, svc := range placed {
		n.Services = append(n.Services, svc.name)
		n.Facts[nodeconf.FactName(svc.name)] = true
		for _, c := range svc.containers {
			c.Command, c.Args, c.Ports = slices.Clone(c.Command), slices.Clone(c.Args), slices.Clone(c.Ports)
			c.Env = maps.Clone(c.Env)
			n.Containers = append(n.Containers, c)
		}
	}
}

// Services returns every service of services.yaml, by name, with the
// nodes it is placed on.
func (s *Site) Services() []Service {
	out := make([]Service, 0, len(s.services))
	for _, svc := range s.services {
		out = append(out, Service{
			Name: svc.name, Group: svc.groupText, GroupSize: svc.groupSize, Instances: svc.instances,
			Spread: svc.spread, User: svc.user, Hosts: slices.Clone(svc.hosts),
			Credentials:         slices.Clone(svc.credNames),
			MonitoringEndpoints: slices.Clone(svc.monitoring), PublicEndpoints: slices.Clone(svc.public),
		})
	}
	return out
}

// explainServices says, for every service, why it is or is not on node
// name: its group, its rank there, a pin or a deny; each at the line that
// decided it.
func (s *Site) explainServices(name string) []Origin {
	n := s.byName[name]
	if n == nil || len(s.services) == 0 {
		return nil
	}
	var pins, denies marks
	{
		var discard ErrorList
		pins, denies = s.nodeMarks(&discard)
	}
	var out []Origin
	for _, svc := range s.services {
		o := Origin{Path: joinKey("services", svc.name), Pos: svc.pos}
		if svc.groupPos.File != "" {
			o.Pos = svc.groupPos
		}
		group := svc.groupName()
		if !s.memberOf(svc, n) {
			o.Value = "not placed: not in " + group
			out = append(out, o)
			continue
		}
		r, _ := s.request(svc, pins, denies)
		c, _, err := placement.Explain(r, name)
		switch {
		case err != nil:
			o.Value = "not placed: " + err.Error()
		case c.Denied:
			o.Value, o.Pos = "not placed: denied by the node", denies[svc.name][name]
		default:
			o.Value = fmt.Sprintf("rank %d of %d in %s", c.Rank, c.Eligible, group)
			if svc.instances == placement.All {
				o.Value = fmt.Sprintf("all instances, on the %d eligible nodes of %s", c.Eligible, strings.TrimPrefix(group, "group "))
			} else {
				o.Value += fmt.Sprintf(", %d instances", svc.instances)
				if svc.instancesPos.File != "" {
					o.Pos = svc.instancesPos
				}
			}
			if svc.spread != "" {
				v, ok := n.Labels[svc.spread]
				if !ok {
					v = "(none)"
				}
				o.Value += fmt.Sprintf(", spread %s=%s level %d", svc.spread, v, c.Level)
			}
			if c.Pinned {
				o.Value, o.Pos = "pinned: "+o.Value, pins[svc.name][name]
			}
			if c.Placed {
				o.Value = "placed: " + o.Value
			} else {
				o.Value = "not placed: " + o.Value
			}
		}
		out = append(out, o)
	}
	return out
}
