@echo off
rem Startup-folder launcher: put a shortcut to this file in shell:startup.
start "" /b pythonw.exe -m agent.cli tray
