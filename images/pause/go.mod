module apwa.dev/images/pause

go 1.22
