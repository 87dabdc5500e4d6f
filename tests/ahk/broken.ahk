#Requires AutoHotkey v2.0
; Cannot load: tests/test_ahk_bridge.py checks the bridge reports why.
value := (1 +
