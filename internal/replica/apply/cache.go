package apply

import (
	"container/list"
	"strings"

	"golang.org/x/sys/unix"
)

// fdCache is an LRU of descriptors by replicated path.
type fdCache struct {
	max int
	m   map[string]*list.Element
	l   list.List // front: most recently used; values are *cachedFD
}

type cachedFD struct {
	path string
	fd   int
	id   fileID // the inode open at fd, once known (idOK)
	idOK bool
}

func (c *fdCache) init(max int) {
	c.max = max
	c.m = make(map[string]*list.Element, max)
	c.l.Init()
}

func (c *fdCache) get(p string) (int, bool) {
	e, ok := c.m[p]
	if !ok {
		return -1, false
	}
	c.l.MoveToFront(e)
	return e.Value.(*cachedFD).fd, true
}

// put adds fd for p, closing the least recently used descriptor when full.
func (c *fdCache) put(p string, fd int) {
	if e, ok := c.m[p]; ok {
		old := e.Value.(*cachedFD)
		if old.fd != fd {
			unix.Close(old.fd)
			old.idOK = false
		}
		old.fd = fd
		c.l.MoveToFront(e)
		return
	}
	if c.l.Len() >= c.max {
		c.remove(c.l.Back())
	}
	c.m[p] = c.l.PushFront(&cachedFD{path: p, fd: fd})
}

// identity gives the inode open at p's cached descriptor (fstat once per
// descriptor); false when p has none.
func (c *fdCache) identity(p string) (fileID, bool) {
	e, ok := c.m[p]
	if !ok {
		return fileID{}, false
	}
	v := e.Value.(*cachedFD)
	if !v.idOK {
		var st unix.Stat_t
		if unix.Fstat(v.fd, &st) != nil {
			return fileID{}, false
		}
		v.id, v.idOK = fileID{st.Dev, st.Ino}, true
	}
	return v.id, true
}

func (c *fdCache) remove(e *list.Element) {
	v := e.Value.(*cachedFD)
	unix.Close(v.fd)
	delete(c.m, v.path)
	c.l.Remove(e)
}

// dropTree forgets p and everything below it.
func (c *fdCache) dropTree(p string) {
	for e := c.l.Front(); e != nil; {
		next := e.Next()
		v := e.Value.(*cachedFD).path
		if v == p || (strings.HasPrefix(v, p) && v[len(p)] == '/') {
			c.remove(e)
		}
		e = next
	}
}

func (c *fdCache) closeAll() {
	for e := c.l.Front(); e != nil; e = e.Next() {
		unix.Close(e.Value.(*cachedFD).fd)
	}
	c.l.Init()
	clear(c.m)
}
