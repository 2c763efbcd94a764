// herd dashboard
