# Runs the broker at logon on Windows, as the current user, with a scheduled task.
#
#   powershell -ExecutionPolicy Bypass -File examples\service\message-broker-at-logon.ps1
#
# Remove it with:  Unregister-ScheduledTask -TaskName message-broker -Confirm:$false

$command = (Get-Command message-broker -ErrorAction Stop).Source
$data = Join-Path $env:LOCALAPPDATA "message-broker\data"
$action = New-ScheduledTaskAction -Execute $command -Argument "serve --data-dir `"$data`" --require-token"
$trigger = New-ScheduledTaskTrigger -AtLogOn -User $env:USERNAME
$settings = New-ScheduledTaskSettingsSet -RestartCount 3 -RestartInterval (New-TimeSpan -Minutes 1) `
    -ExecutionTimeLimit ([TimeSpan]::Zero)
Register-ScheduledTask -TaskName "message-broker" -Action $action -Trigger $trigger `
    -Settings $settings -Description "message_broker, the local message broker" -Force
Start-ScheduledTask -TaskName "message-broker"
